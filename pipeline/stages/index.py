"""Build the dataset index: one row per image with its path, camera, identity and split.

Reads a dataset in its own layout (--dataset), checks it (every split present, file names
parse, every training camera has enough images, and with --verify that every image decodes)
and writes the index table described in docs/formats.md. Nothing is written if a check fails.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.data.datasets import DATASETS, read_dataset, summarize_index
from pipeline.data.validate import check_images_readable, check_training_cameras
from pipeline.errors import PipelineError
from pipeline.io import TABLE_SUFFIXES, write_table

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset", required=True, help=f"dataset layout, one of: {', '.join(DATASETS)}"
    )
    parser.add_argument(
        "--root",
        required=True,
        type=Path,
        help="dataset folder (for --dataset manifest: the manifest CSV file)",
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="index table to write (.csv or .parquet)"
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="decode every image and refuse to write the index if any is unreadable",
    )
    parser.add_argument(
        "--min-images-per-camera",
        type=int,
        default=10,
        help="fewest training images a camera may have (intra-camera stage); default 10",
    )


def run(args: argparse.Namespace) -> None:
    if args.out.suffix.lower() not in TABLE_SUFFIXES:
        raise PipelineError(
            f"{args.out}: the index must be {' or '.join(TABLE_SUFFIXES)} (option --out)"
        )
    if args.min_images_per_camera < 0:
        raise PipelineError(
            f"--min-images-per-camera must be 0 or more, got {args.min_images_per_camera}"
        )
    index = read_dataset(args.dataset, args.root)
    check_training_cameras(index, args.min_images_per_camera)
    if args.verify:
        log.info("decoding %d images (--verify)", len(index))
        check_images_readable(index["path"].tolist())
    write_table(index, args.out)
    log.info("wrote %s: %d images\n%s", args.out, len(index), summarize_index(index))
