"""Write the synthetic demo dataset: drawn pedestrians, strong camera styles, Market-1501 layout.

Identities are drawn people (clothing colours and pattern, build, bag, hair and skin tone); each
camera adds its own background, tint, brightness, blur, noise and scale. The result reads with
`pipeline index --dataset market1501`. The same --seed always gives byte-identical files.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from pipeline import __version__, settings
from pipeline.data.datasets import MARKET_FOLDERS
from pipeline.data.demo import DemoConfig, generate_demo, plan_demo
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

JPEG_QUALITY = 92


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to create")
    parser.add_argument(
        "--force", action="store_true", help="replace --out if it exists and is not empty"
    )
    settings.add_arguments(parser, DemoConfig, "demo dataset")


def run(args: argparse.Namespace) -> None:
    config = settings.from_args(DemoConfig, args)
    count = write_demo_dataset(args.out, config, force=args.force)
    log.info("wrote %d synthetic images to %s (%s)", count, args.out, config)


def write_demo_dataset(out: Path, config: DemoConfig, force: bool = False) -> int:
    """Draw the demo dataset into ``out`` atomically; return the number of images."""
    from PIL import Image

    config.check()
    plan = plan_demo(config)
    with atomic_directory(out, force) as tmp:
        for folder in MARKET_FOLDERS.values():
            (tmp / folder).mkdir()
        for name, pixels in generate_demo(config):
            Image.fromarray(pixels).save(tmp / name, format="JPEG", quality=JPEG_QUALITY)
        (tmp / "README.txt").write_text(_readme(config, plan))
    return len(plan)


def _readme(config: DemoConfig, plan: pd.DataFrame) -> str:
    counts = plan.groupby("split").agg(images=("pid", "size"), ids=("pid", "nunique"))
    counts = counts.reindex(list(MARKET_FOLDERS))
    lines = "\n".join(
        f"  {split}: {row.images} images, {row.ids} identities" for split, row in counts.iterrows()
    )
    return (
        "SYNTHETIC demo dataset: procedurally drawn pedestrians, not real people.\n\n"
        f"Made by `pipeline demo-data --seed {config.seed} --identities {config.identities} "
        f"--cameras {config.cameras} --height {config.height} --width {config.width}` "
        f"(calr-pipeline {__version__}; pipeline/data/demo.py).\n"
        "Identity lives in the person (clothing colours and pattern, build, bag, hair, skin);\n"
        "each camera adds a strong style (background, tint, brightness, blur, noise, scale).\n"
        "Each identity appears in 2-4 cameras with 2-4 images per camera. Half the identities\n"
        "are for training; each of the others has one query (its first camera) and the rest\n"
        "in the gallery. Layout and file names follow Market-1501 (PPPP_cCs1_FFFFFF_00.jpg).\n\n"
        f"{lines}\n"
    )


@contextlib.contextmanager
def atomic_directory(out: Path, force: bool) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``out``; put it in place of ``out`` on success.

    An existing ``out`` must be empty unless ``force``, in which case it is replaced.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PipelineError(f"{out}: exists and is not a folder (option --out)")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise PipelineError(
            f"{out}: folder exists and is not empty; choose another --out or pass --force "
            "to replace it"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{out.name}-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
