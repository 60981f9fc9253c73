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
from pathlib import Path

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="resnet50", help="resnet18 | resnet50 | resnet50_ibn_a")
    parser.add_argument("--pooling", default="avg", help="avg | gem")
    parser.add_argument("--last-stride", type=int, default=1)
    parser.add_argument("--pretrained", default="imagenet", help="imagenet | none")
    parser.add_argument(
        "--weights-path", default=None, help="local ImageNet weights file (default: torch cache)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    parser.add_argument(
        "--calibrate-index",
        type=Path,
        default=None,
        help="dataset index: estimate the BatchNorm statistics on its training images "
        "(default: keep those of the weights)",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=4096,
        help="training images to calibrate on, a seeded random sample (0: all; default 4096)",
    )
    parser.add_argument("--height", type=int, default=256, help="calibration input height")
    parser.add_argument("--width", type=int, default=128, help="calibration input width")
    parser.add_argument("--batch-size", type=int, default=64, help="calibration batch size")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:<n>")
    parser.add_argument("--out", required=True, help="checkpoint to write (.pt)")


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

    from pipeline.data.images import check_input_size
    from pipeline.features.extract import resolve_device
    from pipeline.models import build_model
    from pipeline.models.calibration import calibrate_batchnorm
    from pipeline.models.checkpoint import save_checkpoint

    check_input_size(args.height, args.width)
    torch.manual_seed(args.seed)
    model = build_model(
        arch=args.arch,
        pooling=args.pooling,
        pretrained=args.pretrained,
        weights_path=args.weights_path,
        last_stride=args.last_stride,
    )
    calibration = None
    if args.calibrate_index is not None:
        paths = calibration_paths(args.calibrate_index, args.calibration_images, args.seed)
        device = resolve_device(args.device)
        model.to(device, memory_format=torch.channels_last)
        log.info(
            "calibrating the BatchNorm statistics on %d training images of %s",
            len(paths),
            args.calibrate_index,
        )
        seen = calibrate_batchnorm(
            model, calibration_batches(paths, args.height, args.width, args.batch_size, device)
        )
        model.cpu()
        calibration = {"images": seen, "height": args.height, "width": args.width}
    save_checkpoint(
        args.out,
        {
            "model_config": model.config,
            "model": model.state_dict(),
            "pretrained": args.pretrained,
            "bn_calibration": calibration,
            "epoch": 0,
        },
    )
    log.info(
        "initial %s encoder (pretrained: %s, BatchNorm statistics %s) written to %s",
        args.arch,
        args.pretrained,
        f"calibrated on {calibration['images']} images" if calibration else "of the weights",
        args.out,
    )
