"""Optimisation settings of a training job, and the command-line options that set them.

Both training stages take the same options (``pipeline train-intra`` and ``train-inter``), with
the defaults of the paper: Adam, lr 3.5e-4, weight decay 5e-4, lr x0.1 every 20 epochs, memory
momentum 0.2 and temperature 0.1, batches of 16 identities x 4 instances.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from pipeline.errors import PipelineError


@dataclass(frozen=True)
class TrainOptions:
    """Optimisation settings of one job (the stage's command-line options)."""

    epochs: int
    height: int = 256
    width: int = 128
    batch_size: int = 64
    instances: int = 4
    iters: int = 0
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    step_size: int = 20
    momentum: float = 0.2
    temperature: float = 0.1
    workers: int = 2
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    progress: bool = True

    def check(self) -> None:
        """Fail naming the options whose values cannot work."""
        rules = (
            ("epochs", self.epochs >= 1, "at least 1"),
            ("height", self.height >= 16, "at least 16"),
            ("width", self.width >= 16, "at least 16"),
            ("instances", self.instances >= 1, "at least 1"),
            ("batch-size", self.batch_size >= self.instances, "at least --instances"),
            ("iters", self.iters >= 0, "0 (one pass over the samples) or more"),
            ("lr", self.lr > 0, "positive"),
            ("weight-decay", self.weight_decay >= 0, "0 or more"),
            ("step-size", self.step_size >= 1, "at least 1"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("temperature", self.temperature > 0, "positive"),
            ("workers", self.workers >= 0, "0 or more"),
        )
        bad = [f"--{name} must be {rule}" for name, ok, rule in rules if not ok]
        if bad:
            raise PipelineError("; ".join(bad))


def add_arguments(parser: argparse.ArgumentParser, epochs_help: str) -> None:
    """The optimisation options shared by both training stages."""
    defaults = TrainOptions(epochs=0)
    group = parser.add_argument_group("optimisation")
    group.add_argument("--epochs", type=int, required=True, help=epochs_help)
    group.add_argument("--height", type=int, default=defaults.height, help="input height (px)")
    group.add_argument("--width", type=int, default=defaults.width, help="input width (px)")
    group.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="identities x instances"
    )
    group.add_argument(
        "--instances", type=int, default=defaults.instances, help="images per identity (K)"
    )
    group.add_argument(
        "--iters",
        type=int,
        default=defaults.iters,
        help="batches per epoch; 0 = one pass over the labelled samples",
    )
    group.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate")
    group.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    group.add_argument(
        "--step-size", type=int, default=defaults.step_size, help="lr x0.1 every this many epochs"
    )
    group.add_argument(
        "--momentum",
        type=float,
        default=defaults.momentum,
        help="cluster memory momentum m (Eq. 2)",
    )
    group.add_argument(
        "--temperature",
        type=float,
        default=defaults.temperature,
        help="temperature tau of the contrastive loss (Eq. 3, 6)",
    )
    group.add_argument(
        "--workers", type=int, default=defaults.workers, help="DataLoader worker processes"
    )
    group.add_argument("--device", default=defaults.device, help="auto | cpu | cuda | cuda:<n>")
    group.add_argument("--seed", type=int, default=defaults.seed, help="seed of every random draw")
    group.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic kernels only: bitwise repeatable, somewhat slower",
    )


def job_from_args(args: argparse.Namespace, inputs: dict[str, str]) -> dict:
    """What identifies a training job for resuming: its arguments and the sha256 of each of its
    ``inputs`` files (name -> path), so that a changed input restarts the job."""
    from pipeline.models.checkpoint import file_sha256

    job = {k: v for k, v in vars(args).items() if k not in ("_run", "log_level", "stage")}
    job["sha256"] = {name: file_sha256(path) for name, path in inputs.items()}
    return job


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    """The :class:`TrainOptions` named by parsed arguments (``progress`` stays on)."""
    names = [f.name for f in fields(TrainOptions) if f.name != "progress"]
    return TrainOptions(**{name: getattr(args, name) for name in names})
