"""Stage 1: train one camera's encoder on its own clusters and write its final local labels.

For camera --camera (paper Sec. III-B, Algorithm 1 stage 1): start from --init, then every
epoch embed the camera's training images, cluster them (average-linkage agglomerative,
images // --ratio clusters) and train one epoch with the contrastive loss of Eq. 3. After the
last epoch embed and cluster once more and write those local labels (index_row, camid,
local_label) and the encoder's checkpoint. Cameras are independent jobs, so a workflow runs
them in parallel. A killed job resumes from its last completed epoch (<out>.partial.pt).
"""

from __future__ import annotations

import argparse
import functools
import logging

from pipeline import settings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.cluster.agglomerative import LocalClustering
    from pipeline.train.options import add_arguments as add_training_arguments

    parser.add_argument("--index", required=True, help="dataset index table")
    parser.add_argument("--camera", type=int, required=True, help="camid to train on")
    parser.add_argument("--init", required=True, help="initial checkpoint (pipeline init-model)")
    parser.add_argument("--out-checkpoint", required=True, help="encoder checkpoint to write")
    parser.add_argument("--out-labels", required=True, help="local labels table to write")
    parser.add_argument("--log", required=True, help="per-epoch log table (.csv or .parquet)")
    parser.add_argument(
        "--initial-labels",
        help="local labels of the first epoch (`pipeline cluster-intra` on the initial features); "
        "default: cluster the camera's features here",
    )
    settings.add_arguments(parser, LocalClustering, "local clustering (as cluster-intra)")
    add_training_arguments(parser, epochs_help="training epochs (paper: 20)")


def run(args: argparse.Namespace) -> None:
    import numpy as np

    from pipeline.cluster.agglomerative import (
        LocalClustering,
        camera_local_labels,
        n_local_clusters,
    )
    from pipeline.errors import PipelineError
    from pipeline.io import write_table
    from pipeline.models.checkpoint import load_checkpoint
    from pipeline.tables import INDEX, LOCAL_LABELS
    from pipeline.train.intra import quality_stats
    from pipeline.train.options import job_from_args, options_from_args
    from pipeline.train.runner import extract, finish, train

    options = options_from_args(args)
    clustering = settings.from_args(LocalClustering, args)
    index = INDEX.read(args.index)
    train_split = index[index["split"] == "train"]
    rows = train_split[train_split["camid"] == args.camera]
    if rows.empty:
        cameras = sorted(train_split["camid"].unique().tolist())
        raise PipelineError(
            f"{args.index}: camera {args.camera} (option --camera) has no training images; "
            f"the training split has cameras {cameras}"
        )
    n_clusters = n_local_clusters(len(rows), clustering.ratio, args.camera)  # fail before training
    paths = rows["path"].astype(str).tolist()
    pids = rows["pid"].to_numpy(dtype=np.int64)
    initial_labels = (
        aligned_initial_labels(args.initial_labels, rows.index.to_numpy(), args.camera)
        if args.initial_labels
        else None
    )
    initial_input = {"initial_labels": args.initial_labels} if args.initial_labels else {}
    init_state = load_checkpoint(args.init, "--init")
    log.info(
        "stage 1 (intra-camera) started: camera %d, %d images, %d epochs, %d local clusters",
        args.camera,
        len(paths),
        options.epochs,
        n_clusters,
    )
    result = train(
        stage="intra",
        paths=paths,
        cameras=rows["camid"].to_numpy(dtype=np.int64),
        init_state=init_state,
        options=options,
        # functions that pickle: a job of several processes sends them to each
        prepare_epoch=functools.partial(
            prepare_epoch,
            paths=paths,
            pids=pids,
            camera=args.camera,
            clustering=clustering,
            options=options,
            initial_labels=initial_labels,
        ),
        build_losses=build_losses,
        camera_ids=(args.camera,),
        out_checkpoint=args.out_checkpoint,
        log_path=args.log,
        job=job_from_args(args, {"index": args.index, "init": args.init, **initial_input}),
        meta={"camera": args.camera},
    )
    labels = camera_local_labels(extract(result.model, paths, options), clustering, args.camera)
    write_table(
        LOCAL_LABELS.frame(
            index_row=rows.index.to_numpy(dtype=np.int64), camid=args.camera, local_label=labels
        ),
        args.out_labels,
    )
    finish(args.out_checkpoint, args.log, result)
    precision = quality_stats(labels, pids).get("quality_precision")
    log.info(
        "stage 1 (intra-camera) finished: camera %d, %d local clusters%s; wrote %s and %s",
        args.camera,
        int(labels.max()) + 1,
        f" (pairwise precision {precision:.3f})" if precision is not None else "",
        args.out_labels,
        args.out_checkpoint,
    )


def prepare_epoch(model, epoch: int, *, initial_labels, **data):
    """The epoch's data (:func:`pipeline.train.intra.intra_epoch`): the first epoch trains on
    ``initial_labels`` when given, every other one clusters afresh."""
    from pipeline.train.intra import intra_epoch

    return intra_epoch(model, **data, labels=initial_labels if epoch == 0 else None)


def build_losses(context) -> dict:
    """Stage 1's one loss term: the contrastive loss against the cluster memory (Eq. 3)."""
    from pipeline.train.losses import ClusterContrastLoss

    term = ClusterContrastLoss(context.momentum, context.temperature, False, context.memory_update)
    return {"contrastive": term}


def aligned_initial_labels(path, index_rows, camera: int):
    """The ``local_label`` column of a cluster-intra table, in the order of ``index_rows``."""
    import numpy as np
    import pandas as pd

    from pipeline.errors import PipelineError
    from pipeline.tables import LOCAL_LABELS

    table = LOCAL_LABELS.read(path)
    if (table["camid"] != camera).any():
        raise PipelineError(f"{path}: holds cameras other than {camera} (option --camera)")
    positions = pd.Index(table["index_row"]).get_indexer(index_rows)
    if len(table) != len(index_rows) or (positions < 0).any():
        raise PipelineError(
            f"{path}: its {len(table)} rows are not camera {camera}'s {len(index_rows)} training "
            "images; rerun `pipeline cluster-intra` on features of this index"
        )
    labels = table["local_label"].to_numpy(dtype=np.int64)[positions]
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)
