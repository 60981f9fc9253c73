"""Loading ImageNet weights from local files; nothing is ever downloaded.

``pretrained: imagenet`` reads, in order: the path given in the config (``weights_path``), or
torchvision's own cache file (``$TORCH_HOME/hub/checkpoints/<name>``, the file torchvision would
download, e.g. ``resnet50-0676ba61.pth``). IBN-a has no torchvision release: it needs the
``resnet50_ibn_a.pth`` file of the IBN-Net release, given by path or put in the same cache folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

IMAGENET_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "resnet50_ibn_a": "resnet50_ibn_a.pth",
}


def torch_cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def imagenet_weights_file(arch: str, weights_path: str | os.PathLike | None) -> Path:
    """The local file with ``arch``'s ImageNet weights, or an error saying where to put it."""
    path = Path(weights_path) if weights_path else torch_cache_dir() / IMAGENET_FILES[arch]
    if not path.is_file():
        raise PipelineError(
            f"ImageNet weights for {arch} not found at {path}. Nothing is downloaded at run time: "
            f"copy the file there (torchvision's {IMAGENET_FILES[arch]}"
            + (" from the IBN-Net release" if arch == "resnet50_ibn_a" else "")
            + "), set model.weights_path in the config to where it is, "
            "or use `pretrained: none` for random initialisation."
        )
    return path


def load_imagenet_weights(net: nn.Module, arch: str, weights_path=None) -> Path:
    """Load a torchvision-format (or IBN-a release) state dict into ``net``; return its path.

    Accepts a bare state dict or one wrapped as ``{"state_dict": ...}``, with or without the
    ``module.`` prefix left by DataParallel. The classifier (``fc``) may be missing; every other
    key must match in name and shape.
    """
    path = imagenet_weights_file(arch, weights_path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt file of any kind gets the same message
        raise PipelineError(f"{path}: cannot read weights ({exc}); replace the file") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise PipelineError(f"{path}: weights do not fit {arch} ({exc})") from exc
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise PipelineError(
            f"{path}: weights do not fit {arch}: {len(missing)} missing key(s) "
            f"(first: {missing[:3]}), {len(result.unexpected_keys)} unexpected "
            f"(first: {result.unexpected_keys[:3]}); is it the file for {arch}?"
        )
    log.info("loaded ImageNet weights for %s from %s", arch, path)
    return path
