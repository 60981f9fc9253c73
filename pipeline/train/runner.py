"""The epoch loop of a training job, with exact resume: what both training stages share.

Per epoch: the stage's ``prepare_epoch`` extracts features with the current model and returns the
epoch's pseudo labels (stage 1: this epoch's agglomerative clusters; stage 2: the refined labels),
the cluster memory is rebuilt from those features (Eq. 1-2), one epoch is trained, the scheduler
steps, and the job's state is written atomically to ``<out>.partial.pt`` and its log so far
beside it (``<out>.partial.log.csv``), so that a killed job leaves no log at ``--log`` that
looks finished.

A partial checkpoint holds the model, optimizer, scheduler, loss terms (the camera classifier),
epoch counter, every random state (:mod:`pipeline.train.state`) and the history, plus a hash of
the job's
arguments: a rerun of the same job resumes from its last completed epoch and ends with exactly
the result of an uninterrupted run; a partial file of another job is ignored. :func:`finish`
writes the final log and checkpoint and removes the partial files. The delivered model is always the
last epoch's: there is no model selection.

With ``gpus`` > 1 the epochs run in that many processes (:mod:`pipeline.train.distributed`):
each embeds its share of the images, trains on its share of every batch, and rank 0 writes the
partial checkpoint and log; when they have finished, :func:`train` reads the last partial
checkpoint back, so that the caller sees the same result as with one process.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.errors import PipelineError
from pipeline.features.extract import extract_embeddings, resolve_amp, resolve_device
from pipeline.io import write_table
from pipeline.models import ReIDModel
from pipeline.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from pipeline.runtime import set_determinism
from pipeline.train.distributed import Group, current, launch
from pipeline.train.loop import (
    build_optimizer,
    build_scheduler,
    make_train_loader,
    train_epoch,
)
from pipeline.train.losses import EpochTargets, LossContext, LossTerm
from pipeline.train.options import TrainOptions
from pipeline.train.state import (
    Checkpointer,
    LossStates,
    RandomState,
    job_hash,
    job_seed,
    seed_everything,
)

log = logging.getLogger(__name__)


@dataclass
class EpochData:
    """What one epoch trains on, from the stage's ``prepare_epoch(model, epoch)``: for each of
    the job's images its pseudo label (contiguous 0..K-1, K >= 2), its embedding by the current
    model (for the memory) and its cluster weight (Eq. 6; None = Eq. 3). ``stats`` go into the
    epoch's log row.
    """

    labels: np.ndarray
    features: np.ndarray
    weights: np.ndarray | None = None
    stats: dict = field(default_factory=dict)


@dataclass
class TrainResult:
    model: ReIDModel
    state: dict  # the checkpoint of the last epoch


PrepareEpoch = Callable[[ReIDModel, int], EpochData]
# builds the job's loss terms by name, once the model exists (their parameters draw random
# numbers, after the model's, so that a seed gives the same initialisation every time)
BuildLosses = Callable[[LossContext], dict[str, LossTerm]]


def partial_path(out_checkpoint: str | os.PathLike) -> Path:
    out = Path(out_checkpoint)
    return out.with_name(out.name.removesuffix(".pt") + ".partial.pt")


def partial_log_path(out_checkpoint: str | os.PathLike, log_path: str | os.PathLike) -> Path:
    """Where the log of the completed epochs is kept while the job runs: beside the partial
    checkpoint, in the log's format."""
    out = Path(out_checkpoint)
    return out.with_name(out.name.removesuffix(".pt") + ".partial.log" + Path(log_path).suffix)


def extract(model: ReIDModel, paths: Sequence[str], options: TrainOptions) -> np.ndarray:
    """Embeddings of ``paths`` with the job's input size, batch, workers and device; in a job
    of several processes each embeds its share and every one returns all the rows."""
    group = current()
    rows = extract_embeddings(
        model,
        paths[group.share(len(paths))],
        height=options.height,
        width=options.width,
        batch_size=options.batch_size,
        num_workers=options.workers,
        device=options.device,
        progress=options.progress and group.leader,
    )
    return group.gather_rows(rows, len(paths))


class _TrainingState:
    """The live state of a training job: everything a checkpoint saves and restores."""

    def __init__(
        self,
        *,
        stage: str,
        meta: dict,
        model: ReIDModel,
        losses: dict[str, LossTerm],
        options: TrainOptions,
        generator: torch.Generator,
        pretrained: str,
        fingerprint: str,
        group: Group,
    ) -> None:
        self.stage, self.meta, self.options, self.group = stage, meta, options, group
        self.device = group.device if group.distributed else resolve_device(options.device)
        self.amp_dtype = resolve_amp("auto", self.device)
        self.model = model.to(self.device)
        self.losses = {name: term.to(self.device) for name, term in losses.items()}
        params = [p for p in model.parameters() if p.requires_grad]
        for term in self.losses.values():
            params += list(term.parameters())
        self.optimizer = build_optimizer(params, options.lr, options.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, options.step_size)
        self.generator = generator
        self.pretrained = pretrained
        self.fingerprint = fingerprint
        self.epoch = 0
        self.history: list[dict] = []
        self.checkpointer = Checkpointer(
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            losses=LossStates(self.losses),
            rng=RandomState(generator),
        )

    def load(self, state: dict, *, rng: bool) -> None:
        """Carry on from a checkpoint's optimizer, scheduler, loss terms, epoch and history (and
        with ``rng`` its random state: a resumed job, not the next round)."""
        # a checkpoint written on another device carries on as this job's optimizer steps
        # (fused on CUDA, with its step counts on the device as the fused step keeps them)
        optimizer = state["optimizer"]
        fused = self.optimizer.defaults["fused"]
        groups = [{**group, "fused": fused, "foreach": None} for group in optimizer["param_groups"]]
        self.checkpointer.restore(
            {**state, "optimizer": {**optimizer, "param_groups": groups}},
            ("optimizer", "scheduler", "losses") + (("rng",) if rng else ()),
        )
        self.epoch = state["epoch"]
        self.history = list(state["history"])

    def snapshot(self) -> dict:
        """The checkpoint of the job as it is now (docs/formats.md)."""
        return {
            "stage": self.stage,
            **self.meta,
            "model_config": self.model.config,
            **self.checkpointer.state(),
            "pretrained": self.pretrained,
            "epoch": self.epoch,
            "history": self.history,
            "job_hash": self.fingerprint,
        }

    def train_epoch(self, data: EpochData, paths: list[str], cameras: np.ndarray) -> dict:
        """Start every loss term on ``data``, train one epoch, step the scheduler; the log row."""
        started = time.monotonic()
        device, options = self.device, self.options
        self.model.to(
            memory_format=torch.channels_last if device.type == "cuda" else torch.contiguous_format
        )
        targets = EpochTargets(
            labels=torch.as_tensor(data.labels, dtype=torch.int64, device=device),
            cameras=torch.tensor(cameras, dtype=torch.int64, device=device),
            weights=None
            if data.weights is None
            else torch.as_tensor(data.weights, device=device).float(),
        )
        features = torch.as_tensor(data.features, device=device)
        active = {name: term for name, term in self.losses.items() if term.active(self.epoch)}
        for term in active.values():
            term.start_epoch(self.epoch, features, targets)
        loader = make_train_loader(
            paths,
            data.labels,
            cameras,
            height=options.height,
            width=options.width,
            batch_size=options.batch_size,
            instances=options.instances,
            iters=options.iters,
            workers=options.workers,
            generator=self.generator,
            pin_memory=device.type == "cuda",
            group=self.group,
        )
        lr = self.optimizer.param_groups[0]["lr"]
        losses = train_epoch(
            self.group.wrap(self.model),
            active,
            loader,
            self.optimizer,
            targets,
            device=device,
            amp_dtype=self.amp_dtype,
            epoch=self.epoch,
            progress=options.progress and self.group.leader,
            group=self.group,
        )
        for module in (self.model, *self.losses.values()):
            self.group.broadcast_buffers(module)
        self.scheduler.step()
        self.epoch += 1
        row = {
            "epoch": self.epoch,
            "stage": self.stage,
            **self.meta,
            **losses,
            "lr": lr,
            "n_clusters": int(data.labels.max()) + 1,
            "n_train_samples": len(paths),
            **data.stats,
            "seconds": round(time.monotonic() - started, 3),
        }
        self.history.append(row)
        return row


def train(
    *,
    stage: str,
    paths: Sequence[str],
    cameras: np.ndarray,
    init_state: dict,
    options: TrainOptions,
    prepare_epoch: PrepareEpoch,
    build_losses: BuildLosses,
    camera_ids: Sequence[int],
    out_checkpoint: str | os.PathLike,
    log_path: str | os.PathLike,
    job: dict,
    continue_from_init: bool = False,
    meta: dict | None = None,
) -> TrainResult:
    """Train ``options.epochs`` epochs on the images ``paths`` (with camids ``cameras``).

    The job starts from ``init_state`` (a checkpoint dict): its weights only, or with
    ``continue_from_init`` also its optimizer, scheduler, loss terms, epoch counter and history
    when it holds them (a previous round of stage 2). ``build_losses`` makes the job's loss
    terms (:mod:`pipeline.train.losses`) once the model is built; ``camera_ids`` are the
    training split's cameras (the camera classifier's classes). ``job`` (JSON-serialisable)
    identifies the job for resuming; ``stage`` and ``meta`` (e.g. the camera) are stored in
    every checkpoint and log row.
    """
    options.check()
    job_arguments = {
        "stage": stage,
        "paths": list(paths),
        "cameras": np.asarray(cameras, dtype=np.int64),
        "init_state": init_state,
        "options": options,
        "prepare_epoch": prepare_epoch,
        "build_losses": build_losses,
        "camera_ids": tuple(int(camera) for camera in camera_ids),
        "out_checkpoint": out_checkpoint,
        "log_path": log_path,
        "job": job,
        "continue_from_init": continue_from_init,
        "meta": dict(meta or {}),
    }
    if options.gpus == 1:
        return _train(**job_arguments)
    launch(options.gpus, resolve_device(options.device), functools.partial(_train, **job_arguments))
    state = load_checkpoint(partial_path(out_checkpoint))
    return TrainResult(model=model_from_checkpoint(state), state=state)


def _train(
    *,
    stage: str,
    paths: list[str],
    cameras: np.ndarray,
    init_state: dict,
    options: TrainOptions,
    prepare_epoch: PrepareEpoch,
    build_losses: BuildLosses,
    camera_ids: tuple[int, ...],
    out_checkpoint: str | os.PathLike,
    log_path: str | os.PathLike,
    job: dict,
    continue_from_init: bool,
    meta: dict,
) -> TrainResult:
    """:func:`train`'s epochs in this process, which is one of a job's processes or its only
    one."""
    group = current()
    set_determinism(options.deterministic)
    fingerprint = job_hash(job)
    source = init_state if continue_from_init and "optimizer" in init_state else None
    end_epoch = (source["epoch"] if source is not None else 0) + options.epochs
    partial = partial_path(out_checkpoint)
    resumed = _resumable(partial, fingerprint)
    if resumed is not None:
        source = resumed
        log.info("resuming from %s after epoch %d of %d", partial, resumed["epoch"], end_epoch)

    generator = torch.Generator()
    if resumed is None:
        seed_everything(job_seed(options.seed, source["epoch"] if source else 0), generator)
    model = model_from_checkpoint(resumed or init_state)
    context = LossContext(
        feature_dim=model.feature_dim,
        camera_ids=camera_ids,
        momentum=options.momentum,
        temperature=options.temperature,
        memory_update=options.memory_update,
    )
    state = _TrainingState(
        stage=stage,
        meta=meta,
        model=model,
        losses=build_losses(context),
        options=options,
        generator=generator,
        pretrained=init_state.get("pretrained", "none"),
        fingerprint=fingerprint,
        group=group,
    )
    if source is not None:
        _check_continuation(source, state.losses)
        # after building the loss terms, whose initialisation draws random numbers
        state.load(source, rng=resumed is not None)

    while state.epoch < end_epoch:
        data = prepare_epoch(state.model, state.epoch)
        # every process trains on rank 0's labels, whatever the clustering does
        data.labels = group.broadcast(data.labels)
        if data.weights is not None:
            data.weights = group.broadcast(data.weights)
        row = state.train_epoch(data, paths, cameras)
        if not group.leader:
            continue
        save_checkpoint(partial, state.snapshot())
        write_log(state.history, partial_log_path(out_checkpoint, log_path))
        terms = ", ".join(
            f"{name} {row[f'loss_{name}']:.4f}" for name in state.losses if f"loss_{name}" in row
        )
        log.info(
            "%s epoch %d/%d: loss %.4f (%s), %d clusters, %d samples, %.1f s",
            stage,
            state.epoch,
            end_epoch,
            row["loss_total"],
            terms,
            row["n_clusters"],
            row["n_train_samples"],
            row["seconds"],
        )
    return TrainResult(model=state.model, state=state.snapshot())


def finish(
    out_checkpoint: str | os.PathLike, log_path: str | os.PathLike, result: TrainResult
) -> None:
    """Write the final checkpoint and log, then remove the partial checkpoint and log."""
    state = {k: v for k, v in result.state.items() if k != "job_hash"}
    write_log(state["history"], log_path)
    save_checkpoint(out_checkpoint, state)
    partial_path(out_checkpoint).unlink(missing_ok=True)
    partial_log_path(out_checkpoint, log_path).unlink(missing_ok=True)


def write_log(history: list[dict], log_path: str | os.PathLike) -> None:
    """The whole history as a table, one row per epoch (written atomically)."""
    write_table(pd.DataFrame(history), log_path)


def _resumable(partial: Path, fingerprint: str) -> dict | None:
    if not partial.is_file():
        return None
    state = load_checkpoint(partial)
    if state.get("job_hash") != fingerprint:
        log.warning(
            "ignoring %s: written by a job with other arguments or inputs; starting afresh",
            partial,
        )
        return None
    return state


def _check_continuation(source: dict, losses: dict[str, LossTerm]) -> None:
    """A checkpoint carried on (a previous round, or this job's partial one) must have been
    trained with the same loss terms as this job."""
    trained = list(source.get("losses", {}))
    if trained != list(losses):
        raise PipelineError(
            f"--init is a checkpoint trained with the loss terms {trained} but this job trains "
            f"{list(losses)}; continue with the same loss settings (e.g. --camera-loss) or start "
            "from init-model's checkpoint"
        )
