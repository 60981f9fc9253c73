"""Wall time of one CALR round at Market-1501 size, job start-ups included.

A round of the workflow is four jobs, each a ``python -m pipeline`` process: embed the training
images with the previous round's model (``extract``), cluster them (``cluster-global``), refine
the clusters with the local labels (``refine``) and train one epoch on the refined labels
(``train-inter``). This runs those four commands one after the other, as the workflow does, and
times each from its start to its end, so that starting Python, importing PyTorch, initialising
CUDA and reading and writing files all count. Made first and not timed: synthetic JPEGs of
``--identities`` people over ``--cameras`` cameras in a manifest (each person a layout of colour
blocks, each image of it that layout with noise and its camera's tint), their index, an initial
model (random weights, BatchNorm calibrated on the images as the demo does) and local labels
(the identities, standing in for stage 1's). The refinement discards nothing (``--p0 0``, the
late rounds of the schedule), so that the epoch trains on every clustered image.

    .venv/bin/python benchmarks/round.py --device cuda            # Market-1501 size, ResNet-50
    .venv/bin/python benchmarks/round.py --device cpu --images 600 --arch resnet18 \\
        --height 64 --width 32                                     # a check of the script

The last line of output is one JSON object with the figures and the settings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROUND = ("extract", "cluster-global", "refine", "train-inter")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--images", type=int, default=12936, help="training images (Market-1501)")
    parser.add_argument("--identities", type=int, default=751)
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=8, help="loader processes of each job")
    parser.add_argument("--knn", default="auto", help="neighbour search of cluster-global")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder, kept")
    return parser.parse_args()


def write_dataset(folder: Path, args: argparse.Namespace) -> Path:
    """The synthetic JPEGs (128x64, like Market-1501's crops) and their manifest."""
    rng = np.random.default_rng(0)
    layouts = rng.integers(0, 256, size=(args.identities, 16, 8, 3)).astype(np.float32)
    tints = rng.uniform(-40, 40, size=(args.cameras, 1, 1, 3)).astype(np.float32)
    pids = np.arange(args.images) % args.identities
    cameras = rng.integers(0, args.cameras, size=args.images)
    rows = []
    for i, (pid, camera) in enumerate(zip(pids, cameras, strict=True)):
        noise = rng.normal(0, 20, size=(16, 8, 3)).astype(np.float32)
        blocks = np.clip(layouts[pid] + tints[camera] + noise, 0, 255).astype(np.uint8)
        path = folder / "images" / f"{i:06d}.jpg"
        Image.fromarray(blocks).resize((64, 128), Image.BILINEAR).save(path, quality=90)
        rows.append((path.name, int(camera) + 1, int(pid)))
    manifest = folder / "images" / "manifest.csv"
    pd.DataFrame(rows, columns=["path", "camera", "pid"]).to_csv(manifest, index=False)
    return manifest


def pipeline(stage: str, *options, log: Path) -> float:
    """Run ``python -m pipeline <stage> <options>``; its wall seconds (output to ``log``)."""
    command = [sys.executable, "-m", "pipeline", stage, *map(str, options)]
    start = time.perf_counter()
    with open(log, "w") as output:
        finished = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    if finished.returncode:
        sys.exit(f"{stage} failed ({finished.returncode}):\n{log.read_text()[-3000:]}")
    return seconds


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = args.keep or Path(temporary)
        (work / "images").mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        manifest = write_dataset(work, args)
        size = ["--height", args.height, "--width", args.width]
        device = ["--device", args.device]
        index, model, log = work / "index.csv", work / "model_init.pt", work / "logs"
        log.mkdir(exist_ok=True)
        pipeline(
            "index", "--dataset", "manifest", "--root", manifest, "--out", index,
            log=log / "index.log",
        )  # fmt: skip
        pipeline(
            "init-model", "--arch", args.arch, "--pretrained", "none", "--calibrate-bn",
            "--calibrate-index", index, *size, *device, "--out", model, log=log / "init.log",
        )  # fmt: skip
        table = pd.read_csv(index)
        local = work / "local_labels.csv"
        pd.DataFrame(
            {"index_row": table.index, "camid": table["camid"], "local_label": table["pid"]}
        ).to_csv(local, index=False)
        prepared = time.perf_counter() - start
        print(f"prepared {args.images} images, index, model and local labels in {prepared:.1f} s")

        features, clusters, refined = work / "train.h5", work / "clusters.csv", work / "refined.csv"
        loader = ["--batch-size", args.batch_size, "--workers", args.workers]
        seconds = {
            "extract": pipeline(
                "extract", "--index", index, "--checkpoint", model, "--split", "train", *size,
                *device, *loader, "--out", features, log=log / "extract.log",
            ),
            "cluster-global": pipeline(
                "cluster-global", "--features", features, "--knn", args.knn, *device,
                "--out", clusters, "--summary", work / "clusters.json",
                "--out-neighbours", work / "neighbours.npz", log=log / "cluster.log",
            ),
            "refine": pipeline(
                "refine", "--clusters", clusters, "--features", features,
                "--neighbours", work / "neighbours.npz", "--local-labels", local,
                "--epoch", 0, "--total-epochs", 50, "--p0", 0, "--out", refined,
                "--summary", work / "refine.json", log=log / "refine.log",
            ),
            "train-inter": pipeline(
                "train-inter", "--index", index, "--labels", refined,
                "--refine-summary", work / "refine.json", "--init", model, "--epochs", 1,
                "--total-epochs", 50, *size, *device, *loader, "--out-checkpoint",
                work / "model.pt", "--log", work / "train_log.csv", log=log / "train.log",
            ),
        }  # fmt: skip
        summary = json.loads((work / "clusters.json").read_text())
        labelled = int((pd.read_csv(refined)["label"] >= 0).sum())
    total = sum(seconds.values())
    for stage in ROUND:
        print(f"{stage:<15} {seconds[stage]:7.1f} s")
    print(f"{'one round':<15} {total:7.1f} s ({args.images} images, {args.arch})")
    print(
        json.dumps(
            {
                "round_seconds": round(total, 2),
                **{
                    f"{stage.replace('-', '_')}_seconds": round(s, 2)
                    for stage, s in seconds.items()
                },
                "clusters": summary["n_clusters"],
                "labelled_images": labelled,
                "images": args.images,
                "identities": args.identities,
                "cameras": args.cameras,
                "device": args.device,
                "arch": args.arch,
                "height": args.height,
                "width": args.width,
                "batch_size": args.batch_size,
                "workers": args.workers,
                "knn": args.knn,
            }
        )
    )


if __name__ == "__main__":
    main()
