"""Build the dataset index: one row per image with its path, camera, identity and split.

Reads a dataset in its own layout (--dataset), checks it (every split present, file names
parse, every training camera has enough images, and with --verify that every image decodes)
and writes the index table described in docs/formats.md. Nothing is written if a check fails.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline import settings
from pipeline.data.datasets import DATASETS, read_dataset, summarize_index
from pipeline.data.validate import check_images_readable, check_training_cameras
from pipeline.errors import PipelineError
from pipeline.io import TABLE_SUFFIXES, write_table
from pipeline.settings import setting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetOptions:
    """The dataset: its layout, where it is, and how many training images a camera needs."""

    name: str = setting(
        "demo",
        "dataset layout: demo generates the synthetic dataset under <results>/demo-data first; "
        "manifest reads a CSV file (path, camera, optional pid and split)",
        choices=tuple(DATASETS),
        flag="--dataset",
    )
    root: str | None = setting(
        None, "dataset folder (for manifest: the CSV file); ignored for demo", flag="--root"
    )
    min_images_per_camera: int = setting(
        10,
        "fewest training images a camera may have (the intra-camera stage needs some)",
        minimum=0,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", required=True, type=Path, help="index table to write (.csv or .parquet)"
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="decode every image and refuse to write the index if any is unreadable",
    )
    settings.add_arguments(parser, DatasetOptions, "dataset")


def run(args: argparse.Namespace) -> None:
    if args.out.suffix.lower() not in TABLE_SUFFIXES:
        raise PipelineError(
            f"{args.out}: the index must be {' or '.join(TABLE_SUFFIXES)} (option --out)"
        )
    options = settings.from_args(DatasetOptions, args)
    if options.root is None:
        raise PipelineError("--root is required: the dataset folder (for manifest: the CSV file)")
    index = read_dataset(options.name, Path(options.root))
    check_training_cameras(index, options.min_images_per_camera)
    if args.verify:
        log.info("decoding %d images (--verify)", len(index))
        check_images_readable(index["path"].tolist())
    write_table(index, args.out)
    log.info("wrote %s: %d images\n%s", args.out, len(index), summarize_index(index))
