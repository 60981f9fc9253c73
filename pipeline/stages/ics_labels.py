"""Write the intra-camera supervised local labels: each camera's annotated identities, unlinked.

For CCAFL in the ICS setting: reads the dataset index and writes, for every training image, its
camera's identity label (the local labels table of docs/formats.md: index_row, camid,
local_label), numbered per camera by a permutation seeded with --seed, so that no identity is
linked across cameras (pipeline/data/ics.py). Stands in for stage 1's clustering and training:
the experiments that choose `inter.local_labels: annotations` use this table wherever local
labels go (the association clusterer, the refinement, the losses that need them).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline import settings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.runtime import Seed

    parser.add_argument("--index", required=True, type=Path, help="dataset index table")
    parser.add_argument("--out", required=True, type=Path, help="local labels table to write")
    settings.add_arguments(parser, Seed, "seed (the numbering of each camera's identities)")


def run(args: argparse.Namespace) -> None:
    import numpy as np

    from pipeline.cluster.labels import first_rows
    from pipeline.data.ics import ics_local_labels
    from pipeline.errors import PipelineError
    from pipeline.io import write_table
    from pipeline.runtime import Seed
    from pipeline.tables import INDEX, LOCAL_LABELS

    seed = settings.from_args(Seed, args).seed
    index = INDEX.read(args.index)
    train = index[index["split"] == "train"]
    pids = train["pid"].to_numpy(dtype=np.int64)
    unknown = pids < 0
    if unknown.any():
        raise PipelineError(
            f"{args.index}: {int(unknown.sum())} training image(s) have no identity (pid -1; "
            f"first index rows {first_rows(train.index.to_numpy()[unknown])}); the intra-camera "
            "supervised setting needs each camera's identities annotated: give them (the "
            "manifest's pid column), or use stage 1's clusters (inter.local_labels: clusters)"
        )
    cameras = train["camid"].to_numpy(dtype=np.int64)
    labels = ics_local_labels(cameras, pids, seed)
    write_table(
        LOCAL_LABELS.frame(index_row=train.index.to_numpy(), camid=cameras, local_label=labels),
        args.out,
    )
    per_camera = {int(c): int(labels[cameras == c].max()) + 1 for c in np.unique(cameras)}
    log.info(
        "%d training images, %d identities per camera summed over cameras (%s); wrote %s",
        len(train),
        sum(per_camera.values()),
        ", ".join(f"camera {c}: {n}" for c, n in per_camera.items()),
        args.out,
    )
