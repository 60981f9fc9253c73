"""Training throughput of the real training loop against a bare forward+backward+step loop.

The real loop is one epoch of :func:`pipeline.train.loop.train_epoch` as the stages run it: the
P x K identity sampler, a DataLoader whose workers decode and augment synthetic JPEGs (resize,
flip, pad + crop, random erasing), normalisation on the device, the cluster memory loss and its
momentum update, and the camera classifier behind gradient reversal, with the loader built
anew as every epoch does. The bare loop runs the same model, optimizer, device, batch and input
size on one preloaded, normalised batch with a trivial loss, so the ratio says how much of the
model's training throughput everything else costs. After a warm-up of both, they are measured
back to back ``--repeats`` times (alternating which goes first); the medians are reported and
the ratio is the median of the per-repeat ratios.

    .venv/bin/python benchmarks/train.py --device cpu --arch resnet18 --iters 10

The last line of output is one JSON object with the figures and the settings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.features.extract import resolve_amp, resolve_device
from pipeline.models import build_model
from pipeline.train.loop import build_optimizer, make_train_loader, train_epoch
from pipeline.train.losses import CameraAdversarialLoss, ClusterContrastLoss, EpochTargets

CLUSTERS = 64
CAMERAS = 6


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--iters", type=int, default=20, help="training steps per measurement")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--repeats", type=int, default=3, help="measurements of each, alternated")
    parser.add_argument(
        "--images", type=int, default=512, help="synthetic JPEGs (128x64, like Market-1501)"
    )
    return parser.parse_args()


def write_jpegs(folder: Path, count: int) -> list[str]:
    """``count`` 128x64 JPEGs of blurred random colour blocks (they compress like photos)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        blocks = rng.integers(0, 256, size=(16, 8, 3), dtype=np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(blocks).resize((64, 128), Image.BILINEAR).save(path, quality=90)
        paths.append(str(path))
    return paths


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Setup:
    """Model, loss terms (weighted contrastive loss and camera classifier, as stage 2),
    optimizer and pseudo labels shared by both loops."""

    def __init__(self, args: argparse.Namespace, device: torch.device, n_images: int) -> None:
        torch.manual_seed(0)
        channels_last = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        self.model = build_model(args.arch, "avg", "none").to(device, memory_format=channels_last)
        dim = self.model.feature_dim
        self.losses = {
            "contrastive": ClusterContrastLoss(momentum=0.2, temperature=0.1, weighted=True),
            "camera": CameraAdversarialLoss(dim, range(CAMERAS), beta=1.0, grl_lambda=1.0),
        }
        self.losses["camera"].to(device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        params += list(self.losses["camera"].parameters())
        self.optimizer = build_optimizer(params, lr=3.5e-4, weight_decay=5e-4)
        self.labels = np.arange(n_images) % CLUSTERS
        self.cameras = np.arange(n_images) % CAMERAS
        self.targets = EpochTargets(
            labels=torch.as_tensor(self.labels, device=device),
            weights=torch.rand(n_images, device=device),
            cameras=torch.as_tensor(self.cameras, device=device),
        )
        features = F.normalize(torch.randn(n_images, dim, device=device), dim=1)
        for term in self.losses.values():
            term.start_epoch(0, features, self.targets)


def time_training(setup: Setup, paths, args, device, amp_dtype, generator) -> float:
    """Images/s of ``--iters`` real training steps, loader construction included."""
    synchronize(device)
    start = time.perf_counter()
    loader = make_train_loader(
        paths,
        setup.labels,
        setup.cameras,
        height=args.height,
        width=args.width,
        batch_size=args.batch_size,
        instances=args.instances,
        iters=args.iters,
        workers=args.workers,
        generator=generator,
        pin_memory=device.type == "cuda",
    )
    train_epoch(
        setup.model,
        setup.losses,
        loader,
        setup.optimizer,
        setup.targets,
        device=device,
        amp_dtype=amp_dtype,
        progress=False,
    )
    synchronize(device)
    return args.iters * args.batch_size / (time.perf_counter() - start)


def time_bare(setup: Setup, args, device, amp_dtype) -> float:
    """Images/s of ``--iters`` forward+backward+step on one preloaded normalised batch."""
    batch = torch.randn(args.batch_size, 3, args.height, args.width, device=device)
    if device.type == "cuda":
        batch = batch.contiguous(memory_format=torch.channels_last)
    autocast = (
        torch.autocast(device_type=device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    setup.model.train()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.iters):
        with autocast:
            features = setup.model(batch)
        setup.optimizer.zero_grad(set_to_none=True)
        features.float().sum().backward()
        setup.optimizer.step()
    synchronize(device)
    return args.iters * args.batch_size / (time.perf_counter() - start)


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    amp_dtype = resolve_amp("auto", device)
    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(Path(folder), args.images)
        setup = Setup(args, device, len(paths))
        warmup = argparse.Namespace(**{**vars(args), "iters": 2})
        time_bare(setup, warmup, device, amp_dtype)
        time_training(setup, paths, warmup, device, amp_dtype, generator)
        train_rates, bare_rates = [], []
        for repeat in range(args.repeats):
            # alternate which goes first, so that a drift in machine load hits both alike
            if repeat % 2 == 0:
                bare_rates.append(time_bare(setup, args, device, amp_dtype))
                train_rates.append(time_training(setup, paths, args, device, amp_dtype, generator))
            else:
                train_rates.append(time_training(setup, paths, args, device, amp_dtype, generator))
                bare_rates.append(time_bare(setup, args, device, amp_dtype))
            print(
                f"repeat {repeat + 1}/{args.repeats}: bare {bare_rates[-1]:.1f} images/s, "
                f"training {train_rates[-1]:.1f} images/s, "
                f"ratio {train_rates[-1] / bare_rates[-1]:.3f}"
            )
    bare_rate = statistics.median(bare_rates)
    train_rate = statistics.median(train_rates)
    ratio = statistics.median([t / b for t, b in zip(train_rates, bare_rates, strict=True)])
    print(f"bare forward+backward+step: {bare_rate:.1f} images/s (median of {args.repeats})")
    print(f"full training loop:         {train_rate:.1f} images/s (median of {args.repeats})")
    print(f"ratio training/bare: {ratio:.3f} (median of the {args.repeats} paired ratios)")
    print(
        json.dumps(
            {
                "train_images_per_second": round(train_rate, 2),
                "bare_images_per_second": round(bare_rate, 2),
                "ratio": round(ratio, 4),
                "device": str(device),
                "device_name": (
                    torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
                ),
                "torch_threads": torch.get_num_threads(),
                "arch": args.arch,
                "batch_size": args.batch_size,
                "instances": args.instances,
                "height": args.height,
                "width": args.width,
                "iters": args.iters,
                "workers": args.workers,
                "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype else "off",
                "repeats": args.repeats,
            }
        )
    )


if __name__ == "__main__":
    main()
