"""Checkpoints: written atomically, read as data only (``torch.load(weights_only=True)``).

A checkpoint is a dict of tensors and plain Python values (see docs/formats.md); it can never
carry code to execute. ``model_config`` holds the keyword arguments of :func:`build_model`
(without ``pretrained``: the weights are in the checkpoint), so a model is rebuilt from the file
alone.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path

import torch

from pipeline.errors import PipelineError
from pipeline.io import atomic_output
from pipeline.models.reid import ReIDModel, build_model

FORMAT_VERSION = 1
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` (plus ``format_version``) atomically.

    The checkpoint is serialised in memory and then written: torch's zip writer reports a full
    disk as ``RuntimeError: unexpected pos``, a plain write as the ``OSError`` that
    :func:`pipeline.io.atomic_output` turns into a "no space left on device" error.
    """
    buffer = io.BytesIO()
    torch.save({**state, "format_version": FORMAT_VERSION}, buffer)
    with atomic_output(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def load_checkpoint(path: str | os.PathLike, option: str | None = None) -> dict:
    """Read a checkpoint; a missing, truncated or foreign file is a PipelineError naming it
    and, when given, the ``option`` that passed it."""
    path = Path(path)
    wanted = (
        f"{option} wants a model checkpoint (.pt) written by `pipeline init-model` or a "
        "training stage"
        if option
        else "a model checkpoint (.pt) is written by `pipeline init-model` or a training stage"
    )
    if not path.is_file():
        raise PipelineError(f"{path}: checkpoint not found; run the training stage that writes it")
    with open(path, "rb") as handle:
        signature = handle.read(len(HDF5_SIGNATURE))
    if signature == HDF5_SIGNATURE:
        raise PipelineError(
            f"{path}: an HDF5 file (a feature file of `pipeline extract`?), not a checkpoint; "
            f"{wanted}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt files fail in many ways
        # torch's own message for a refused file suggests weights_only=False, which would run
        # whatever code the file holds: it is never passed on
        refused = isinstance(exc, pickle.UnpicklingError) and "weights_only" in str(exc)
        if refused and "GLOBAL" in str(exc):
            raise PipelineError(
                f"{path}: refused: the file holds Python objects other than tensors and plain "
                f"data, and loading them could run code; it was not written by this pipeline. "
                f"{wanted}"
            ) from None
        reason = (
            "not a torch.save file of plain data" if refused else f"{type(exc).__name__}: {exc}"
        )
        raise PipelineError(
            f"{path}: corrupt or unreadable checkpoint ({reason}); {wanted}. "
            "If it is one, it was damaged: delete it and rerun the stage that wrote it"
        ) from (None if refused else exc)
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise PipelineError(
            f"{path}: not a checkpoint of this pipeline (format_version "
            f"{state.get('format_version') if isinstance(state, dict) else None}, "
            f"expected {FORMAT_VERSION}); {wanted}"
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
