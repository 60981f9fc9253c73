"""Where and how a job runs: its device, determinism and seed (the config's top-level keys)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pipeline.settings import setting


@dataclass(frozen=True)
class Device:
    """Where a job's network runs and whether its kernels must be deterministic."""

    device: str = setting(
        "auto",
        "cpu | cuda | cuda:<n> | auto (cuda when a GPU is visible); jobs ask the scheduler for a "
        "GPU unless this is cpu",
        pattern=r"auto|cpu|cuda(:\d+)?",
    )
    deterministic: bool = setting(
        False, "deterministic kernels only: bitwise repeatable training, somewhat slower"
    )


@dataclass(frozen=True)
class Seed:
    """The seed of a run: every random draw of every stage derives from it."""

    seed: int = setting(0, "seed of every random draw (initialisation, sampling, clustering)")


def array_device(device: str) -> str | None:
    """The device for code that runs on NumPy unless told otherwise (the neighbour search, the
    evaluation): None for ``auto`` (a GPU when one is visible), else the setting."""
    return None if device == "auto" else device


def set_determinism(enabled: bool) -> None:
    """Deterministic kernels only (and no cuDNN autotuning) when ``enabled``: bitwise repeatable
    runs at some cost in speed. On CUDA this needs a fixed cuBLAS workspace, set here."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled
