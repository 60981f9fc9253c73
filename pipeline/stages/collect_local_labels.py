"""Collect stage 1's per-camera local labels into one table for the refinement.

Reads the local-label tables of ``pipeline train-intra`` (one per camera, columns index_row,
camid, local_label), checks each (not empty, no negative label, every row listed once over all
tables) and writes them as one table, in the order given. The workflow refines against this one
file, so that the refinement's inputs are known before the dataset index is read (the camera set
comes from the index, a checkpoint) and a round's jobs can be grouped into one submission.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.cluster.labels import first_rows
from pipeline.errors import PipelineError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tables", required=True, type=Path, nargs="+", help="local-label tables, one per camera"
    )
    parser.add_argument("--out", required=True, type=Path, help="combined table to write")


def run(args: argparse.Namespace) -> None:
    from pipeline.io import write_table

    write_table(read_local_label_tables(args.tables), args.out)


def read_local_label_tables(paths: list[Path]) -> pd.DataFrame:
    """The tables at ``paths`` concatenated (columns index_row, camid, local_label), checked:
    each is non-empty with labels >= 0, and no index_row appears twice (the error names the
    files that list it)."""
    from pipeline.tables import LOCAL_LABELS

    tables = []
    for path in paths:
        table = LOCAL_LABELS.read(path)
        if table.empty:
            raise PipelineError(
                f"{path}: local-label table is empty; rerun `pipeline cluster-intra` for its camera"
            )
        if (table["local_label"] < 0).any():
            first = int(table.loc[table["local_label"] < 0, "index_row"].iloc[0])
            raise PipelineError(f"{path}: negative local_label (first at index_row {first})")
        tables.append(table.loc[:, LOCAL_LABELS.names].assign(_source=str(path)))
    table = pd.concat(tables, ignore_index=True)
    repeated = table["index_row"].duplicated(keep=False)
    if repeated.any():
        first = table[repeated].iloc[0]
        sources = ", ".join(
            sorted(set(table.loc[table["index_row"] == first["index_row"], "_source"]))
        )
        raise PipelineError(
            f"index_row {int(first['index_row'])} has a local label in more than one place "
            f"({sources}); pass each camera's table once"
        )
    return table.drop(columns="_source")


def aligned_local_labels(paths: list[Path], index_row: np.ndarray, camid: np.ndarray) -> np.ndarray:
    """Local labels of every feature row from the local-label tables at ``paths`` (one per
    camera, or the collected one), in feature row order (:func:`align_local_labels`)."""
    return align_local_labels(read_local_label_tables(paths), index_row, camid)


def align_local_labels(table: pd.DataFrame, index_row: np.ndarray, camid: np.ndarray) -> np.ndarray:
    """The ``local_label`` of each of ``index_row`` in a local-labels ``table``; every row must
    have one, and the table's cameras must agree with ``camid``."""
    rows = pd.Index(table["index_row"]).get_indexer(index_row)
    missing = rows < 0
    if missing.any():
        cameras = ", ".join(str(c) for c in np.unique(camid[missing]))
        raise PipelineError(
            f"no local label for {int(missing.sum())} training row(s) of camera(s) {cameras} "
            f"(first index_row {first_rows(index_row[missing])}); pass every camera's table from "
            "`pipeline cluster-intra` (or `pipeline ics-labels`) with --local-labels"
        )
    check_cameras(table["camid"].to_numpy()[rows], camid, index_row, "--local-labels")
    return table["local_label"].to_numpy(dtype=np.int64)[rows]


def check_cameras(found: np.ndarray, camid: np.ndarray, index_row: np.ndarray, where) -> None:
    """Fail naming ``where`` when a table's cameras ``found`` disagree with ``camid``."""
    bad = found != camid
    if bad.any():
        first = np.flatnonzero(bad)[0]
        raise PipelineError(
            f"{where}: index_row {int(index_row[first])} has camid {int(found[first])} but the "
            f"features say {int(camid[first])}; the tables and features come from different "
            "indexes"
        )
