"""Throughput of the full extraction against the bare model forward, in one run.

The full extraction is :func:`pipeline.features.extract.extract_embeddings` over synthetic JPEGs
(file reading, decoding, resizing, DataLoader workers, normalisation, forward, copy back). The
bare forward runs the same model on preloaded, already normalised tensors with the same device,
batch size, input size and inference settings, so the ratio says how much of the model's
throughput the data path loses. After a warm-up of both, the two are measured back to back
``--repeats`` times (alternating which goes first); the medians of each are reported, and the
ratio is the median of the per-repeat ratios, which shared-machine load disturbs least. CPU time
per image (this process and the loader workers) is reported too: on a machine shared with other
jobs it shows what the data path costs even when wall-clock figures are disturbed.

    .venv/bin/python benchmarks/extract.py --device cpu --arch resnet50 --images 256

The last line of output is one JSON object with the figures and the settings.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.features.extract import (
    default_num_workers,
    embed_batch,
    extract_embeddings,
    inference_settings,
    resolve_amp,
    resolve_device,
)
from pipeline.models import build_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--images", type=int, default=256, help="synthetic JPEGs to extract")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader processes, 0: a background thread (default: as `pipeline extract`)",
    )
    parser.add_argument("--amp", default="auto", help="auto | bf16 | fp16 | off")
    parser.add_argument("--flip", action="store_true")
    parser.add_argument("--repeats", type=int, default=5, help="measurements of each, alternated")
    parser.add_argument(
        "--source-size",
        default="128x64",
        help="HxW of the synthetic JPEGs (Market-1501 crops are 128x64)",
    )
    return parser.parse_args()


def write_jpegs(folder: Path, count: int, height: int, width: int) -> list[str]:
    """``count`` JPEGs of smooth random colour fields (compress like photos, unlike noise)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        coarse = rng.integers(0, 256, size=(8, 4, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
        path = folder / f"{i:06d}.jpg"
        image.save(path, quality=95)
        paths.append(str(path))
    return paths


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the loader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(run: Callable[[], None], count: int, device: torch.device) -> tuple[float, float]:
    """(images per second, CPU milliseconds per image) of ``run`` over ``count`` images."""
    synchronize(device)
    cpu, wall = cpu_seconds(), time.perf_counter()
    run()
    synchronize(device)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return count / wall, 1000 * cpu / count


def run_extraction(model, paths, args, device) -> Callable[[], None]:
    def run() -> None:
        extract_embeddings(
            model,
            paths,
            height=args.height,
            width=args.width,
            batch_size=args.batch_size,
            num_workers=args.workers,
            device=str(device),
            flip=args.flip,
            amp=args.amp,
            progress=False,
        )

    return run


def run_forward(model, count: int, args, device, amp_dtype) -> Callable[[], None]:
    """The forward alone over ``count`` preloaded images in batches of ``--batch-size``."""
    batch = torch.randn(args.batch_size, 3, args.height, args.width, device=device)
    batch = batch.contiguous(memory_format=torch.channels_last)
    sizes = [args.batch_size] * (count // args.batch_size)
    sizes += [count % args.batch_size] if count % args.batch_size else []

    def run() -> None:
        with inference_settings(model, device, amp_dtype):
            for size in sizes:
                embed_batch(model, batch[:size], args.flip)

    return run


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    amp_dtype = resolve_amp(args.amp, device)
    if args.workers is None:
        args.workers = default_num_workers(device)
    source_height, source_width = (int(v) for v in args.source_size.split("x"))
    torch.manual_seed(0)
    model = build_model(args.arch, "avg", "none")
    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(Path(folder), args.images, source_height, source_width)
        warmup = paths[: 2 * args.batch_size]
        run_forward(model, len(warmup), args, device, amp_dtype)()
        run_extraction(model, warmup, args, device)()
        runs = {
            "model": run_forward(model, len(paths), args, device, amp_dtype),
            "extract": run_extraction(model, paths, args, device),
        }
        rates: dict[str, list[float]] = {"model": [], "extract": []}
        cpu_ms: dict[str, list[float]] = {"model": [], "extract": []}
        for repeat in range(args.repeats):
            # alternate which goes first, so that a drift in machine load hits both alike
            for name in ("model", "extract") if repeat % 2 == 0 else ("extract", "model"):
                rate, cpu = measure(runs[name], len(paths), device)
                rates[name].append(rate)
                cpu_ms[name].append(cpu)
            print(
                f"repeat {repeat + 1}/{args.repeats}: model {rates['model'][-1]:.1f} images/s "
                f"({cpu_ms['model'][-1]:.1f} CPU ms/image), extraction "
                f"{rates['extract'][-1]:.1f} images/s ({cpu_ms['extract'][-1]:.1f} CPU ms/image)"
            )
    model_rate = statistics.median(rates["model"])
    extract_rate = statistics.median(rates["extract"])
    pairs = zip(rates["extract"], rates["model"], strict=True)
    ratio = statistics.median([e / m for e, m in pairs])
    model_cpu, extract_cpu = (
        statistics.median(cpu_ms["model"]),
        statistics.median(cpu_ms["extract"]),
    )
    print(f"bare model forward: {model_rate:.1f} images/s (median of {args.repeats})")
    print(f"full extraction:    {extract_rate:.1f} images/s (median of {args.repeats})")
    print(f"ratio extraction/model: {ratio:.3f} (median of the {args.repeats} paired ratios)")
    print(
        f"CPU time per image: model {model_cpu:.1f} ms, extraction {extract_cpu:.1f} ms "
        f"(incl. loader workers): ratio {model_cpu / extract_cpu:.3f}"
    )
    print(
        json.dumps(
            {
                "extract_images_per_second": round(extract_rate, 2),
                "model_images_per_second": round(model_rate, 2),
                "ratio": round(ratio, 4),
                "model_cpu_ms_per_image": round(model_cpu, 2),
                "extract_cpu_ms_per_image": round(extract_cpu, 2),
                "cpu_ratio": round(model_cpu / extract_cpu, 4),
                "device": str(device),
                "device_name": (
                    torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
                ),
                "torch_threads": torch.get_num_threads(),
                "arch": args.arch,
                "batch_size": args.batch_size,
                "height": args.height,
                "width": args.width,
                "images": args.images,
                "workers": args.workers,
                "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype else "off",
                "flip": args.flip,
                "source_size": args.source_size,
                "repeats": args.repeats,
            }
        )
    )


if __name__ == "__main__":
    main()
