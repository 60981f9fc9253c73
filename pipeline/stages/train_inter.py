"""Stage 2: train the global encoder on refined labels with the camera classifier (Eq. 6-9).

Trains --epochs epochs (one round of the workflow; 1 = re-cluster every epoch, as the paper) on
the refined labels of --labels: images labelled -1 are left out, the others are trained with the
contrastive loss weighted by their cluster weight (Eq. 6) plus --beta times the camera domain
loss of a classifier behind a gradient reversal layer (Eq. 7-9). Each epoch first embeds the
labelled images with the current model to rebuild the cluster memory. When --init is a previous
round's checkpoint, its optimizer, scheduler, camera classifier and epoch counter carry on;
init-model's checkpoint starts them fresh. The loss terms are those of
pipeline/train/terms.py (LOSSES), each configured by its own options: --no-camera-loss and
--no-cluster-weights (with `refine --mode none` upstream) give the baseline and the ablations
of Table III; CA-UReID's terms (--instance-loss, --separation-loss, --cacc-loss, with --css for
the camera style separation module) and CCAFL's (--icdl-loss, --gid-loss, --ical-loss, which
need each camera's identities: --local-labels) give the other two methods.
"""

from __future__ import annotations

import argparse
import functools
import logging

from pipeline import settings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.models.css import CameraStyleOptions
    from pipeline.train.options import add_arguments as add_training_arguments
    from pipeline.train.terms import LOSSES

    parser.add_argument("--index", required=True, help="dataset index table")
    parser.add_argument("--labels", required=True, help="refined labels table (pipeline refine)")
    parser.add_argument(
        "--local-labels",
        nargs="*",
        default=[],
        help="local-label tables (per camera, or collected): each camera's identities, for the "
        "loss terms that need them (--icdl-loss, --gid-loss, --ical-loss)",
    )
    parser.add_argument(
        "--refine-summary", default=None, help="refinement summary JSON, copied into the log"
    )
    parser.add_argument(
        "--init", required=True, help="init-model's checkpoint, or the previous round's"
    )
    parser.add_argument("--out-checkpoint", required=True, help="checkpoint to write")
    parser.add_argument("--log", required=True, help="per-epoch log table (.csv or .parquet)")
    parser.add_argument(
        "--experiment", default=None, help="experiment name, recorded in the checkpoint"
    )
    parser.add_argument(
        "--total-epochs", type=int, default=50, help="epochs of the whole stage (paper: 50)"
    )
    settings.add_arguments(parser, CameraStyleOptions, "camera style separation (CA-UReID)")
    for name, term in LOSSES.items():
        settings.add_arguments(parser, term.options, f"loss term {name!r}")
    add_training_arguments(parser, epochs_help="epochs to train in this job (one round)")


def run(args: argparse.Namespace) -> None:
    import json

    from pipeline.errors import PipelineError
    from pipeline.models.checkpoint import load_checkpoint
    from pipeline.models.css import CameraStyleOptions
    from pipeline.tables import INDEX, REFINED_LABELS
    from pipeline.train.inter import (
        inter_training_set,
        summary_fields,
        training_cameras,
    )
    from pipeline.train.options import job_from_args, options_from_args
    from pipeline.train.runner import finish, train
    from pipeline.train.terms import LOSSES

    options = options_from_args(args)
    css = settings.from_args(CameraStyleOptions, args)
    loss_options = {name: settings.from_args(term.options, args) for name, term in LOSSES.items()}
    contrastive = loss_options["contrastive"]
    weighted = contrastive.enabled and contrastive.cluster_weights
    camera_loss = loss_options["camera"]
    index = INDEX.read(args.index)
    training_set = inter_training_set(
        index,
        REFINED_LABELS.read(args.labels, require=("weight",) if weighted else ()),
        use_weights=weighted,
        where=args.labels,
    )
    if camera_loss.enabled:
        camera_ids = training_cameras(index)
    else:
        camera_ids = tuple(sorted(index.loc[index["split"] == "train", "camid"].unique().tolist()))
    log_fields = {}
    if args.refine_summary:
        try:
            with open(args.refine_summary) as handle:
                log_fields = summary_fields(json.load(handle))
        except (OSError, json.JSONDecodeError) as exc:
            raise PipelineError(
                f"{args.refine_summary}: cannot read the refinement summary (option "
                f"--refine-summary: {exc}); rerun `pipeline refine`"
            ) from exc
    init_state = load_checkpoint(args.init, "--init")
    done = int(init_state.get("epoch", 0)) if "optimizer" in init_state else 0
    if done + args.epochs > args.total_epochs:
        raise PipelineError(
            f"{args.init} has {done} completed epoch(s); {args.epochs} more (--epochs) would "
            f"pass --total-epochs {args.total_epochs}"
        )
    init_state = with_camera_style_separation(init_state, css.enabled, options.seed, args.init)
    rows = index.loc[training_set.index_rows]
    paths = rows["path"].astype(str).tolist()
    local = local_identities(args.local_labels, training_set.index_rows, rows["camid"].to_numpy())
    log.info(
        "stage 2 (inter-camera) started: epochs %d-%d of %d, %d labelled images in %d clusters "
        "(%d left out), loss terms %s",
        done + 1,
        done + args.epochs,
        args.total_epochs,
        len(paths),
        training_set.n_clusters,
        training_set.n_outliers,
        ", ".join(f"{name} ({options})" for name, options in loss_options.items()),
    )

    build_losses = functools.partial(
        build_inter_losses,
        loss_options,
        local_identities=local,
        epochs=range(done, done + args.epochs),
    )
    inputs = {"index": args.index, "labels": args.labels, "init": args.init}
    inputs |= {f"local_labels_{i}": path for i, path in enumerate(args.local_labels)}
    result = train(
        stage="inter",
        paths=paths,
        cameras=rows["camid"].to_numpy(),
        init_state=init_state,
        options=options,
        # functions that pickle: a job of several processes sends them to each
        prepare_epoch=functools.partial(
            prepare_epoch,
            paths=paths,
            training_set=training_set,
            options=options,
            log_fields=log_fields,
        ),
        build_losses=build_losses,
        camera_ids=camera_ids,
        out_checkpoint=args.out_checkpoint,
        log_path=args.log,
        job=job_from_args(args, inputs),
        continue_from_init=True,
        meta={"seed": options.seed}
        | ({} if args.experiment is None else {"experiment": args.experiment}),
    )
    finish(args.out_checkpoint, args.log, result)
    log.info(
        "stage 2 (inter-camera) finished after epoch %d of %d; wrote %s",
        result.state["epoch"],
        args.total_epochs,
        args.out_checkpoint,
    )


def prepare_epoch(model, epoch: int, **data):
    """The epoch's data (:func:`pipeline.train.inter.inter_epoch`; the same every epoch)."""
    from pipeline.train.inter import inter_epoch

    return inter_epoch(model, **data)


def build_inter_losses(loss_options: dict, context, *, local_identities, epochs: range) -> dict:
    """The loss terms that ``loss_options`` (name -> settings) switch on, built for ``context``
    with the images' ``local_identities``; refused when one of ``epochs`` (0-based) would train
    no term (the runner builds them before the first step). A module-level function, so that
    the processes of a multi-GPU job can be sent it."""
    from dataclasses import replace

    from pipeline.errors import PipelineError
    from pipeline.train.terms import build_terms

    terms = build_terms(loss_options, replace(context, local_identities=local_identities))
    idle = [e + 1 for e in epochs if not any_active(terms, e)]
    if idle:
        raise PipelineError(
            f"no loss term trains in epoch(s) {idle} (terms {', '.join(terms) or 'none'}); "
            "enable one, or move the terms' first/last epochs"
        )
    return terms


def any_active(terms: dict, epoch: int) -> bool:
    """Whether some term trains in (0-based) ``epoch``."""
    return any(term.active(epoch) for term in terms.values())


def with_camera_style_separation(state: dict, enabled: bool, seed: int, where: str) -> dict:
    """The checkpoint ``state`` with a camera style separation module when ``enabled``: kept
    when it has one, else a new one initialised from ``seed`` (init-model's encoder has none,
    and every experiment starts from it). A checkpoint with the module and ``enabled`` off is
    an error: the module cannot be taken away from a trained encoder."""
    import torch

    from pipeline.errors import PipelineError
    from pipeline.models.checkpoint import model_from_checkpoint

    has_css = bool(state["model_config"].get("css"))
    if has_css and not enabled:
        raise PipelineError(
            f"{where} (--init) has a camera style separation module; continue it with --css "
            "(config inter.css.enabled), or start from init-model's checkpoint"
        )
    if has_css or not enabled:
        return state
    model = model_from_checkpoint(state)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.add_css()
    return {**state, "model_config": model.config, "model": model.state_dict()}


def local_identities(paths: list, index_rows, camids):
    """Each training image's identity among every camera's identities of the local-label
    tables at ``paths`` (None without tables): numbered over the whole table, so that the
    global ID classifier keeps its size when a round leaves images out."""
    if not paths:
        return None
    import numpy as np

    from pipeline.cluster.association import camera_identities
    from pipeline.stages.collect_local_labels import align_local_labels, read_local_label_tables
    from pipeline.train.losses import LocalIdentities

    table = read_local_label_tables(paths)
    labels = align_local_labels(table, index_rows, camids)
    ids, id_cameras = camera_identities(
        np.concatenate([table["camid"].to_numpy(), camids]),
        np.concatenate([table["local_label"].to_numpy(), labels]),
    )
    return LocalIdentities(ids=ids[len(table) :], cameras=id_cameras)
