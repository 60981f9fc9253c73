"""Checkpoints: written atomically, read as data only (``torch.load(weights_only=True)``).

A checkpoint is a dict of tensors and plain Python values (see docs/formats.md); it can never
carry code to execute. ``model_config`` holds the keyword arguments of :func:`build_model`
(without ``pretrained``: the weights are in the checkpoint), so a model is rebuilt from the file
alone.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from pipeline.errors import PipelineError
from pipeline.io import atomic_output
from pipeline.models.reid import ReIDModel, build_model

FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` (plus ``format_version``) atomically."""
    with atomic_output(path) as tmp:
        torch.save({**state, "format_version": FORMAT_VERSION}, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint; a missing, truncated or foreign file is a PipelineError naming it."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: checkpoint not found; run the training stage that writes it")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt files fail in many ways
        raise PipelineError(
            f"{path}: corrupt or unreadable checkpoint ({type(exc).__name__}: {exc}); "
            "delete it and rerun the stage that wrote it"
        ) from exc
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise PipelineError(
            f"{path}: not a checkpoint of this pipeline (format_version "
            f"{state.get('format_version') if isinstance(state, dict) else None}, "
            f"expected {FORMAT_VERSION})"
        )
    for key in ("model_config", "model"):
        if key not in state:
            raise PipelineError(f"{path}: checkpoint has no {key!r}; it is incomplete")
    return state


def model_from_checkpoint(state: dict) -> ReIDModel:
    """Rebuild the encoder a checkpoint describes and load its weights (quietly: no warning
    about random initialisation, since the weights come from the checkpoint)."""
    import logging

    reid_log = logging.getLogger("pipeline.models.reid")
    previous = reid_log.level
    reid_log.setLevel(logging.ERROR)
    try:
        model = build_model(**state["model_config"], pretrained="none")
    finally:
        reid_log.setLevel(previous)
    model.load_state_dict(state["model"])
    return model


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
