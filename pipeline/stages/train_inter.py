"""Stage 2: train the global encoder on refined labels with the camera classifier (Eq. 6-9).

Trains --epochs epochs (one round of the workflow; 1 = re-cluster every epoch, as the paper) on
the refined labels of --labels: images labelled -1 are left out, the others are trained with the
contrastive loss weighted by their cluster weight (Eq. 6) plus --beta times the camera domain
loss of a classifier behind a gradient reversal layer (Eq. 7-9). Each epoch first embeds the
labelled images with the current model to rebuild the cluster memory. When --init is a previous
round's checkpoint, its optimizer, scheduler, camera classifier and epoch counter carry on;
init-model's checkpoint starts them fresh. The loss terms are those of
pipeline/train/losses.py (LOSSES), each configured by its own options: --no-camera-loss and
--no-cluster-weights (with `refine --mode none` upstream) give the baseline and the ablations
of Table III.
"""

from __future__ import annotations

import argparse
import functools
import logging

from pipeline import settings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.train.losses import LOSSES
    from pipeline.train.options import add_arguments as add_training_arguments

    parser.add_argument("--index", required=True, help="dataset index table")
    parser.add_argument("--labels", required=True, help="refined labels table (pipeline refine)")
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
    for name, term in LOSSES.items():
        settings.add_arguments(parser, term.options, f"loss term {name!r}")
    add_training_arguments(parser, epochs_help="epochs to train in this job (one round)")


def run(args: argparse.Namespace) -> None:
    import json

    from pipeline.errors import PipelineError
    from pipeline.models.checkpoint import load_checkpoint
    from pipeline.tables import INDEX, REFINED_LABELS
    from pipeline.train.inter import (
        inter_training_set,
        summary_fields,
        training_cameras,
    )
    from pipeline.train.losses import LOSSES
    from pipeline.train.options import job_from_args, options_from_args
    from pipeline.train.runner import finish, train

    options = options_from_args(args)
    loss_options = {name: settings.from_args(term.options, args) for name, term in LOSSES.items()}
    weighted = loss_options["contrastive"].cluster_weights
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
    rows = index.loc[training_set.index_rows]
    paths = rows["path"].astype(str).tolist()
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
        build_losses=functools.partial(build_losses, loss_options),
        camera_ids=camera_ids,
        out_checkpoint=args.out_checkpoint,
        log_path=args.log,
        job=job_from_args(args, {"index": args.index, "labels": args.labels, "init": args.init}),
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


def build_losses(loss_options: dict, context) -> dict:
    """The loss terms that ``loss_options`` (name -> settings) switch on."""
    from pipeline.train.losses import LOSSES

    terms = {name: LOSSES[name].build(opts, context) for name, opts in loss_options.items()}
    return {name: term for name, term in terms.items() if term is not None}
