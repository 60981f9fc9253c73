"""Optimisation settings of a training job, and the command-line options that set them.

Both training stages take the same options (``pipeline train-intra`` and ``train-inter``), with
the defaults of the paper: Adam, lr 3.5e-4, weight decay 5e-4, lr x0.1 every 20 epochs, memory
momentum 0.2 and temperature 0.1, batches of 16 identities x 4 instances. :class:`Optimisation`
is the config's ``intra.train`` / ``inter.train`` section; a job's :class:`TrainOptions` adds the
number of epochs, the input size, the device and the seed.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields

from pipeline import settings
from pipeline.data.images import InputSize
from pipeline.errors import PipelineError
from pipeline.runtime import Device, Seed
from pipeline.settings import setting
from pipeline.train.memory import UPDATES


@dataclass(frozen=True)
class Optimisation:
    """Optimisation of a training stage (P x K batches, Adam, cluster memory)."""

    batch_size: int = setting(
        64, "batch size: identities x instances (P x K), all GPUs of the job together", minimum=2
    )
    instances: int = setting(4, "images per identity in a batch (K)", minimum=1)
    iters: int = setting(0, "batches per epoch; 0 = one pass over the labelled samples", minimum=0)
    lr: float = setting(3.5e-4, "Adam learning rate", exclusive_minimum=0)
    weight_decay: float = setting(5e-4, "Adam weight decay", minimum=0)
    step_size: int = setting(
        20, "the learning rate is multiplied by 0.1 every this many epochs", minimum=1
    )
    momentum: float = setting(
        0.2, "cluster memory momentum m (Eq. 2)", minimum=0, exclusive_maximum=1
    )
    temperature: float = setting(
        0.1, "temperature tau of the contrastive loss (Eq. 1, 3, 6)", exclusive_minimum=0
    )
    memory_update: str = setting(
        "sample",
        "how a batch moves the cluster memory (Eq. 2): sample = once per sample in batch order, "
        "re-normalised each step (the equation, ClusterContrast and the released code); mean = "
        "once per cluster with the mean of its samples in the batch",
        choices=UPDATES,
    )
    workers: int = setting(
        2,
        "DataLoader worker processes that decode and augment training images (0: in the "
        "training process itself; on 2 CPU cores 0 or 1 keep the model fed)",
        minimum=0,
    )
    gpus: int = setting(
        1,
        "GPUs of one training job: that many processes with DistributedDataParallel, each "
        "training on batch_size / gpus images (its share of the P identities); the job asks "
        "the scheduler for that many GPUs. With device cpu, that many CPU processes (gloo)",
        minimum=1,
    )


@dataclass(frozen=True)
class TrainOptions:
    """Everything a training job's loop needs: its epochs, the optimisation, the input size,
    where it runs and its seed."""

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
    memory_update: str = "sample"
    workers: int = 2
    gpus: int = 1
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    progress: bool = True

    def check(self) -> None:
        """Fail naming the options whose values cannot work."""
        values = asdict(self)
        problems = ["--epochs must be 1 or more"] if self.epochs < 1 else []
        for part in (Optimisation, InputSize):
            names = {field.name for field in fields(part)}
            problems += settings.violations(
                part, {k: v for k, v in values.items() if k in names}, where=lambda s: s.flag
            )
        if self.batch_size < self.instances:
            problems.append("--batch-size must be at least --instances")
        elif (self.batch_size // self.instances) % self.gpus:
            problems.append(
                f"--gpus {self.gpus} must divide the identities of a batch, --batch-size // "
                f"--instances = {self.batch_size // self.instances}: each process trains on "
                "its share of them"
            )
        if self.gpus > 1 and self.device.startswith("cuda:"):
            problems.append(
                f"--device {self.device} names one GPU but --gpus {self.gpus} asks for several; "
                "use --device cuda (the job's processes take cuda:0, cuda:1, ...)"
            )
        if problems:
            raise PipelineError("; ".join(problems))


PARTS = (Optimisation, InputSize, Device, Seed)


def add_arguments(parser: argparse.ArgumentParser, epochs_help: str) -> None:
    """The options shared by both training stages: epochs, optimisation, input, device, seed."""
    parser.add_argument("--epochs", type=int, required=True, help=epochs_help)
    for part, title in zip(PARTS, ("optimisation", "input", "device", "seed"), strict=True):
        settings.add_arguments(parser, part, title)


def job_from_args(args: argparse.Namespace, inputs: dict[str, str]) -> dict:
    """What identifies a training job for resuming: its arguments and the sha256 of each of its
    ``inputs`` files (name -> path), so that a changed input restarts the job. The number of
    GPUs is not part of it: a job killed on N GPUs resumes on M (with BatchNorm over other
    shares of the batch, so not bitwise the run it would have been)."""
    from pipeline.models.checkpoint import file_sha256

    ignored = ("_run", "log_level", "stage", "gpus")
    job = {k: v for k, v in vars(args).items() if k not in ignored}
    job["sha256"] = {name: file_sha256(path) for name, path in inputs.items()}
    return job


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    """The :class:`TrainOptions` named by parsed arguments (``progress`` stays on), each value
    checked against its setting's bounds."""
    values = {"epochs": args.epochs}
    for part in PARTS:
        values.update(asdict(settings.from_args(part, args)))
    options = TrainOptions(**values)
    options.check()
    return options
