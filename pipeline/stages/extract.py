"""Extract L2-normalised embeddings of one split (optionally one camera) to an HDF5 file.

Reads the dataset index, selects the rows of --split (and --camera), embeds their images with
the encoder in --checkpoint and writes the feature file of docs/formats.md, row-aligned with the
index. The file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import settings
from pipeline.errors import PipelineError
from pipeline.settings import setting

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

SPLITS = ("train", "query", "gallery")
FEATURE_SUFFIXES = (".h5", ".hdf5")


@dataclass(frozen=True)
class ExtractOptions:
    """How features are extracted to HDF5 (every extraction job)."""

    batch_size: int = setting(64, "images per forward pass", minimum=1)
    workers: int | None = setting(
        None,
        "image decoding processes; 0: a background thread of the job (the fastest on a CPU); "
        "null: 0 on a CPU, one per spare core up to 8 on a GPU",
        minimum=0,
    )
    flip: bool = setting(False, "average the embeddings of each image and its mirror image")
    dtype: str = setting(
        "float32", "storage type of the features in HDF5", choices=("float32", "float16")
    )
    amp: str = setting(
        "auto",
        "autocast on CUDA (auto: bf16 where supported); on a CPU always float32",
        choices=("auto", "bf16", "fp16", "off"),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.data.images import InputSize
    from pipeline.runtime import Device

    parser.add_argument("--index", required=True, type=Path, help="dataset index table")
    parser.add_argument("--checkpoint", required=True, type=Path, help="encoder checkpoint (.pt)")
    parser.add_argument("--split", required=True, choices=SPLITS, help="rows of the index to embed")
    parser.add_argument(
        "--camera", type=int, default=None, help="only this camera's rows (default: all cameras)"
    )
    parser.add_argument("--out", required=True, type=Path, help="feature file to write (.h5)")
    settings.add_arguments(parser, ExtractOptions, "extraction")
    settings.add_arguments(parser, InputSize, "input")
    settings.add_arguments(parser, Device, "device")


def select_rows(
    index: pd.DataFrame, split: str, camera: int | None, index_path: Path
) -> pd.DataFrame:
    """The index rows of ``split`` (and ``camera``), keeping their row numbers."""
    rows = index[index["split"] == split]
    if rows.empty:
        present = index["split"].value_counts(sort=False)
        raise PipelineError(
            f"{index_path}: split {split!r} has no rows (option --split); the index has "
            + (", ".join(f"{name} ({count})" for name, count in present.items()) or "no rows")
        )
    if camera is None:
        return rows
    cameras = sorted(rows["camid"].unique().tolist())
    if camera not in cameras:
        raise PipelineError(
            f"{index_path}: camera {camera} has no {split} rows (option --camera); "
            f"cameras in split {split}: {', '.join(map(str, cameras))}"
        )
    return rows[rows["camid"] == camera]


def run(args: argparse.Namespace) -> None:
    from pipeline.data.images import InputSize
    from pipeline.features.extract import (
        default_num_workers,
        extract_embeddings,
        resolve_amp,
        resolve_device,
    )
    from pipeline.features.store import FeatureSet, check_room_for_features, write_features
    from pipeline.models.checkpoint import file_sha256, load_checkpoint, model_from_checkpoint
    from pipeline.runtime import Device, set_determinism
    from pipeline.tables import INDEX

    if args.out.suffix.lower() not in FEATURE_SUFFIXES:
        raise PipelineError(
            f"{args.out}: feature files are HDF5, name them {' or '.join(FEATURE_SUFFIXES)} "
            "(option --out)"
        )
    options = settings.from_args(ExtractOptions, args)
    size = settings.from_args(InputSize, args)
    where = settings.from_args(Device, args)
    device = resolve_device(where.device)
    set_determinism(where.deterministic)
    index = INDEX.read(args.index)
    rows = select_rows(index, args.split, args.camera, args.index)
    state = load_checkpoint(args.checkpoint, "--checkpoint")
    checkpoint_sha256 = file_sha256(args.checkpoint)
    if "pretrained" not in state:
        raise PipelineError(
            f"{args.checkpoint}: checkpoint does not record 'pretrained' (how its initial "
            "weights were made); rewrite it with `pipeline init-model` or a training stage"
        )
    if state["pretrained"] == "none":
        log.warning(
            "the encoder in %s started from RANDOM weights (pretrained: none); recorded as "
            "attribute 'pretrained' of the feature file",
            args.checkpoint,
        )
    model = model_from_checkpoint(state)
    # fail now rather than after the extraction
    check_room_for_features(args.out, rows["path"].tolist(), model.feature_dim, options.dtype)
    amp_dtype = resolve_amp(options.amp, device)
    precision = str(amp_dtype).removeprefix("torch.") if amp_dtype else "off"
    workers = default_num_workers(device) if options.workers is None else options.workers
    camera = "all cameras" if args.camera is None else f"camera {args.camera}"
    log.info(
        "extracting %d %s images (%s) at %dx%d with %s from %s on %s "
        "(amp %s, flip %s, batch %d, decoding in %s)",
        len(rows),
        args.split,
        camera,
        size.height,
        size.width,
        model.config["arch"],
        args.checkpoint,
        device,
        precision,
        "on" if options.flip else "off",
        options.batch_size,
        f"{workers} loader process(es)" if workers else "a background thread",
    )
    start = time.perf_counter()
    embeddings = extract_embeddings(
        model,
        rows["path"].astype(str).tolist(),
        height=size.height,
        width=size.width,
        batch_size=options.batch_size,
        num_workers=workers,
        device=str(device),
        flip=options.flip,
        amp=options.amp,
    )
    seconds = time.perf_counter() - start
    attrs = {
        "model": checkpoint_sha256,
        "pretrained": state["pretrained"],
        "arch": model.config["arch"],
        "height": size.height,
        "width": size.width,
        "flip": options.flip,
        "split": args.split,
        "camera": -1 if args.camera is None else args.camera,
        "amp": precision,
        # what the checkpoint says it is, for the evaluation's table
        "experiment": str(state.get("experiment", "")),
        "epoch": int(state.get("epoch", 0)),
        "seed": int(state.get("seed", -1)),
    }
    write_features(args.out, FeatureSet.from_index(embeddings, rows, attrs), dtype=options.dtype)
    log.info(
        "wrote %s: %d x %d %s features in %.1f s (%.1f images/s)",
        args.out,
        *embeddings.shape,
        options.dtype,
        seconds,
        len(rows) / seconds,
    )
