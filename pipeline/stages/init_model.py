"""Build the initial encoder (ImageNet or random weights) and save it as a checkpoint.

Every later stage starts from this file: stage 1 initialises each camera's encoder from it and
stage 2 the global encoder (Algorithm 1, "Initialize f^c with f"), so all of them start from
the same weights even when they are random.

With ``--calibrate-index`` the BatchNorm running statistics are estimated on (a seeded random
sample of) that index's training images, so that the untrained encoder's features are those of
the network training starts from (see :mod:`pipeline.models.calibration`).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline import settings
from pipeline.errors import PipelineError
from pipeline.models.backbones import BACKBONES
from pipeline.models.pooling import POOLINGS
from pipeline.models.reid import PRETRAINED
from pipeline.settings import setting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelOptions:
    """The encoder: backbone, pooling, initial weights, and the BatchNorm calibration."""

    arch: str = setting(
        "resnet50",
        "backbone (the paper: resnet50; best: resnet50_ibn_a; mobilenet_v2 has ImageNet weights "
        "from `pipeline weights --arch mobilenet_v2`)",
        choices=tuple(BACKBONES),
    )
    pooling: str = setting(
        "avg",
        "global pooling: avg, or gem (GeM with a trainable exponent starting at 3)",
        choices=POOLINGS,
    )
    pretrained: str = setting(
        "imagenet",
        "imagenet (a local weights file, never downloaded) | none (random initialisation)",
        choices=PRETRAINED,
    )
    weights_path: str | None = setting(
        None, "local ImageNet weights file; null: torchvision's cache file under $TORCH_HOME"
    )
    last_stride: int = setting(
        1, "stride of the last stage (1 is the ReID standard)", choices=(1, 2)
    )
    calibrate_bn: bool = setting(
        False,
        "estimate the BatchNorm running statistics on the training images (--calibrate-index) "
        "before anything is extracted. Random weights hold statistics of no data, so without "
        "this the untrained features come from another network than the one training starts "
        "from (pipeline/models/calibration.py); the paper keeps ImageNet's statistics",
    )
    calibration_images: int = setting(
        4096, "training images to calibrate on, a seeded random sample (0: all)", minimum=0
    )
    calibration_batch_size: int = setting(64, "calibration batch size", minimum=2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.data.images import InputSize
    from pipeline.runtime import Device, Seed

    parser.add_argument(
        "--calibrate-index",
        type=Path,
        default=None,
        help="dataset index whose training images calibrate the BatchNorm statistics "
        "(with --calibrate-bn)",
    )
    parser.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    settings.add_arguments(parser, ModelOptions, "model")
    settings.add_arguments(parser, InputSize, "input (calibration)")
    settings.add_arguments(parser, Device, "device (calibration)")
    settings.add_arguments(parser, Seed, "seed (random initialisation, calibration sample)")


def calibration_paths(index_path: Path, images: int, seed: int) -> list[str]:
    """The training images to calibrate on, in a seeded random order (so that a batch mixes
    cameras and identities): all of them, or a sample of ``images``."""
    import numpy as np

    from pipeline.features.extract import check_files_exist
    from pipeline.tables import INDEX

    if images < 0:
        raise PipelineError(f"--calibration-images must be 0 (all) or more, got {images}")
    index = INDEX.read(index_path)
    paths = index.loc[index["split"] == "train", "path"].to_numpy()
    if len(paths) < 2:
        raise PipelineError(
            f"{index_path}: {len(paths)} training image(s); calibrating the BatchNorm "
            "statistics needs two or more (option --calibrate-index)"
        )
    order = np.random.default_rng(seed).permutation(len(paths))
    chosen = paths[order[: images or len(paths)]].tolist()
    check_files_exist(chosen)
    return chosen


def calibration_batches(paths: list[str], height: int, width: int, batch_size: int, device):
    """Normalised image batches of ``paths`` on ``device``; a last batch of one image (no
    variance) is left out."""
    import torch

    from pipeline.data.images import ResizedImageDataset, normalize_batch
    from pipeline.features.extract import prefetched_batches

    if batch_size < 2:
        raise PipelineError(f"calibration batch size must be 2 or more, got {batch_size}")
    dataset = ResizedImageDataset(paths, height, width)
    for images, _ in prefetched_batches(dataset, batch_size):
        if len(images) < 2:
            continue
        images = images.to(device).contiguous(memory_format=torch.channels_last)
        yield normalize_batch(images)


def run(args: argparse.Namespace) -> None:
    import torch

    from pipeline.data.images import InputSize
    from pipeline.features.extract import resolve_device
    from pipeline.models import build_model
    from pipeline.models.calibration import calibrate_batchnorm
    from pipeline.models.checkpoint import save_checkpoint
    from pipeline.models.weights import imagenet_weights_file, weights_provenance
    from pipeline.runtime import Device, Seed

    options = settings.from_args(ModelOptions, args)
    size = settings.from_args(InputSize, args)
    seed = settings.from_args(Seed, args).seed
    if options.calibrate_bn and args.calibrate_index is None:
        raise PipelineError(
            "--calibrate-bn needs --calibrate-index: the dataset index whose training images "
            "calibrate the BatchNorm statistics"
        )
    torch.manual_seed(seed)
    model = build_model(
        arch=options.arch,
        pooling=options.pooling,
        pretrained=options.pretrained,
        weights_path=options.weights_path,
        last_stride=options.last_stride,
    )
    weights = None
    if options.pretrained == "imagenet":
        weights = weights_provenance(imagenet_weights_file(options.arch, options.weights_path))
    calibration = None
    if options.calibrate_bn:
        paths = calibration_paths(args.calibrate_index, options.calibration_images, seed)
        device = resolve_device(settings.from_args(Device, args).device)
        model.to(device, memory_format=torch.channels_last)
        log.info(
            "calibrating the BatchNorm statistics on %d training images of %s",
            len(paths),
            args.calibrate_index,
        )
        batches = calibration_batches(
            paths, size.height, size.width, options.calibration_batch_size, device
        )
        seen = calibrate_batchnorm(model, batches)
        model.cpu()
        calibration = {"images": seen, "height": size.height, "width": size.width}
    save_checkpoint(
        args.out,
        {
            "model_config": model.config,
            "model": model.state_dict(),
            "pretrained": options.pretrained,
            "pretrained_weights": weights,
            "bn_calibration": calibration,
            "experiment": "initial",
            "epoch": 0,
        },
    )
    log.info(
        "initial %s encoder (pretrained: %s, BatchNorm statistics %s) written to %s",
        options.arch,
        options.pretrained,
        f"calibrated on {calibration['images']} images" if calibration else "of the weights",
        args.out,
    )
