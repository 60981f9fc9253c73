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

import pandas as pd

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
