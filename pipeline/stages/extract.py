"""Extract L2-normalised embeddings of one split (optionally one camera) to an HDF5 file.

Reads the dataset index, selects the rows of --split (and --camera), embeds their images with
the encoder in --checkpoint and writes the feature file of docs/formats.md, row-aligned with the
index. The file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

SPLITS = ("train", "query", "gallery")
FEATURE_SUFFIXES = (".h5", ".hdf5")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, type=Path, help="dataset index table")
    parser.add_argument("--checkpoint", required=True, type=Path, help="encoder checkpoint (.pt)")
    parser.add_argument("--split", required=True, choices=SPLITS, help="rows of the index to embed")
    parser.add_argument(
        "--camera", type=int, default=None, help="only this camera's rows (default: all cameras)"
    )
    parser.add_argument("--out", required=True, type=Path, help="feature file to write (.h5)")
    parser.add_argument("--height", type=int, default=256, help="input height (default 256)")
    parser.add_argument("--width", type=int, default=128, help="input width (default 128)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="image decoding processes; 0: a background thread (default: 0 on CPU, one per "
        "spare core up to 8 on a GPU)",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:<n>")
    parser.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="average with the embedding of the mirrored image",
    )
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "float16"), help="stored feature dtype"
    )
    parser.add_argument(
        "--amp",
        default="auto",
        choices=("auto", "bf16", "fp16", "off"),
        help="autocast on CUDA (auto: bf16 where supported); CPU always runs float32",
    )


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
    from pipeline.data.images import check_input_size
    from pipeline.features.extract import (
        default_num_workers,
        extract_embeddings,
        resolve_amp,
        resolve_device,
    )
    from pipeline.features.store import FeatureSet, check_room_for_features, write_features
    from pipeline.models.checkpoint import file_sha256, load_checkpoint, model_from_checkpoint
    from pipeline.tables import INDEX

    if args.out.suffix.lower() not in FEATURE_SUFFIXES:
        raise PipelineError(
            f"{args.out}: feature files are HDF5, name them {' or '.join(FEATURE_SUFFIXES)} "
            "(option --out)"
        )
    check_input_size(args.height, args.width)
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
    check_room_for_features(args.out, rows["path"].tolist(), model.feature_dim, args.dtype)
    device = resolve_device(args.device)
    amp_dtype = resolve_amp(args.amp, device)
    precision = str(amp_dtype).removeprefix("torch.") if amp_dtype else "off"
    workers = default_num_workers(device) if args.workers is None else args.workers
    camera = "all cameras" if args.camera is None else f"camera {args.camera}"
    log.info(
        "extracting %d %s images (%s) at %dx%d with %s from %s on %s "
        "(amp %s, flip %s, batch %d, decoding in %s)",
        len(rows),
        args.split,
        camera,
        args.height,
        args.width,
        model.config["arch"],
        args.checkpoint,
        device,
        precision,
        "on" if args.flip else "off",
        args.batch_size,
        f"{workers} loader process(es)" if workers else "a background thread",
    )
    start = time.perf_counter()
    embeddings = extract_embeddings(
        model,
        rows["path"].astype(str).tolist(),
        height=args.height,
        width=args.width,
        batch_size=args.batch_size,
        num_workers=workers,
        device=str(device),
        flip=args.flip,
        amp=args.amp,
    )
    seconds = time.perf_counter() - start
    attrs = {
        "model": checkpoint_sha256,
        "pretrained": state["pretrained"],
        "arch": model.config["arch"],
        "height": args.height,
        "width": args.width,
        "flip": args.flip,
        "split": args.split,
        "camera": -1 if args.camera is None else args.camera,
        "amp": precision,
    }
    write_features(args.out, FeatureSet.from_index(embeddings, rows, attrs), dtype=args.dtype)
    log.info(
        "wrote %s: %d x %d %s features in %.1f s (%.1f images/s)",
        args.out,
        *embeddings.shape,
        args.dtype,
        seconds,
        len(rows) / seconds,
    )
