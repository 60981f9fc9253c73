"""The tables between stages: each one's columns and types, declared once, and their reader.

docs/formats.md describes these tables for people; this module is that description for the code.
Every stage reads a table with ``<TABLE>.read(path)``, which checks that the required columns are
there and that every declared column holds its kind: an integer column holding ``2.5``, an empty
cell or a number beyond int64 is an error naming the file, the column and the first bad row, not
a value silently truncated, or turned into ``INT64_MIN``, downstream. A float column may hold
empty cells (NaN: how pandas writes a missing number); its readers decide whether that is an
error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.evaluate.metrics import METRICS as SCORED_METRICS
from pipeline.io import read_table

SPLITS = ("train", "query", "gallery")
# retrieval metrics, fractions in [0, 1]: the columns a comparison shows as percentages
METRIC_VALUES = ("mAP", "rank1", "rank5", "rank10", "mINP")
KINDS = {"int": "integers", "float": "numbers", "bool": "True or False", "str": "text"}
DTYPES = {"int": "int64", "float": "float64", "bool": "bool", "str": "str"}
INT64 = np.iinfo(np.int64)
INTEGER_TEXT = re.compile(r"\s*[-+]?\d+\s*")
BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False}


@dataclass(frozen=True)
class Column:
    """A column: its name, its kind (``int``, ``float``, ``bool`` or ``str``), whether every
    table must have it, and for a ``str`` column the values it may hold (empty: any)."""

    name: str
    kind: str
    required: bool = True
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Table:
    """A table of docs/formats.md: what it is and which command writes it (for messages), and
    its columns in the order they are written."""

    title: str
    writer: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        """Every declared column, in the order written."""
        return [column.name for column in self.columns]

    @property
    def required(self) -> list[str]:
        """The columns every table of this kind has, in the order written."""
        return [column.name for column in self.columns if column.required]

    @property
    def dtypes(self) -> dict[str, str]:
        """Declared column -> pandas dtype."""
        return {column.name: DTYPES[column.kind] for column in self.columns}

    def frame(self, **columns) -> pd.DataFrame:
        """A table of this kind from its columns (arrays, or scalars repeated), in the declared
        order. A required column missing, or an undeclared one, is a bug in the writer."""
        missing = [name for name in self.required if name not in columns]
        unknown = [name for name in columns if name not in self.names]
        if missing or unknown:
            raise ValueError(f"{self.title} table: missing {missing}, undeclared {unknown}")
        return pd.DataFrame({name: columns[name] for name in self.names if name in columns})

    def read(self, path: str | os.PathLike, require: Sequence[str] = ()) -> pd.DataFrame:
        """Read the table at ``path`` (CSV or parquet) and :meth:`check` it."""
        path = Path(path)
        csv = path.suffix.lower() == ".csv"
        return self.check(read_table(path), str(path), require, csv=csv)

    def check(
        self, frame: pd.DataFrame, source: str, require: Sequence[str] = (), csv: bool = False
    ) -> pd.DataFrame:
        """``frame`` with every declared column it has converted to its dtype.

        A missing required column (or optional one named in ``require``: the reader needs it),
        or a cell that does not hold its column's kind, is an error naming ``source`` (and, with
        ``csv``, the line of the first bad cell). Undeclared columns are kept as they are.
        """
        needed = [c.name for c in self.columns if c.required] + list(require)
        missing = [name for name in needed if name not in frame.columns]
        if missing:
            raise PipelineError(
                f"{source}: missing column(s) {', '.join(missing)} of the {self.title} table; "
                f"found {', '.join(map(str, frame.columns)) or 'none'}. Is it the right file? "
                f"{self.writer} writes it"
            )
        typed = frame.copy()
        for column in self.columns:
            if column.name in frame.columns:
                typed[column.name] = self._typed(frame[column.name], column, source, csv)
        return typed

    def _typed(self, values: pd.Series, column: Column, source: str, csv: bool) -> pd.Series:
        converted, bad = _CONVERTERS[column.kind](values.reset_index(drop=True))
        if column.values and not bad.any():
            bad = ~converted.isin(column.values).to_numpy()
        if bad.any():
            rows = np.flatnonzero(bad)
            first = int(rows[0])
            cell = values.iloc[first]
            shown = "an empty cell" if _is_empty(cell) else repr(_plain(cell))
            line = f" (line {first + 2})" if csv else ""
            expected = f"one of {', '.join(column.values)}" if column.values else KINDS[column.kind]
            raise PipelineError(
                f"{source}: column {column.name!r} of the {self.title} table must hold "
                f"{expected}, but {len(rows)} row(s) do not, first row {first}{line}: {shown}; "
                f"the file was edited or damaged, rerun {self.writer}"
            )
        converted.index = values.index
        return converted


def _is_empty(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _to_int(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """int64 values and the mask of cells that are not integers within int64."""
    if pd.api.types.is_bool_dtype(values):
        return values, np.ones(len(values), dtype=bool)
    if pd.api.types.is_integer_dtype(values):
        if pd.api.types.is_unsigned_integer_dtype(values):
            bad = values.to_numpy() > INT64.max
            return values.where(~bad, 0).astype("int64"), bad
        return values.astype("int64"), np.zeros(len(values), dtype=bool)
    if pd.api.types.is_float_dtype(values):
        numbers = values.to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            # 2**63 is the first float beyond int64: larger magnitudes do not fit
            bad = (
                ~np.isfinite(numbers)
                | (numbers != np.floor(numbers))
                | (np.abs(numbers) >= 2.0**63)
            )
        return pd.Series(np.where(bad, 0, numbers).astype(np.int64)), bad
    parsed = [_parse_int(value) for value in values]
    bad = np.array([value is None for value in parsed], dtype=bool)
    return pd.Series([0 if v is None else v for v in parsed], dtype="int64"), bad


def _parse_int(value) -> int | None:
    """An int within int64 from an int, an integral float or integer text; None otherwise."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        number = int(value)
    elif isinstance(value, str) and INTEGER_TEXT.fullmatch(value):
        number = int(value)
    elif isinstance(value, (float, np.floating)) and np.isfinite(value) and value == int(value):
        number = int(value)
    else:
        return None
    return number if INT64.min <= number <= INT64.max else None


def _to_float(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """float64 values and the mask of cells that are not numbers (empty cells are NaN)."""
    if pd.api.types.is_bool_dtype(values):
        return values, np.ones(len(values), dtype=bool)
    numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    return numbers, (numbers.isna() & ~values.isna()).to_numpy()


def _to_bool(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """bool values (from booleans, 0 and 1, or the text true, false, 1 or 0 in any case) and the
    mask of cells that are none of those."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype(bool), np.zeros(len(values), dtype=bool)
    mapped = values.map(_parse_bool)
    bad = mapped.isna().to_numpy()
    return mapped.where(~bad, False).astype(bool), bad


def _parse_bool(value) -> bool | None:
    if isinstance(value, str):
        return BOOL_TEXT.get(value.strip().lower())
    if isinstance(value, (bool, np.bool_, int, np.integer, float, np.floating)) and value in (0, 1):
        return bool(value)
    return None


def _to_str(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Text values and the mask of empty cells."""
    bad = values.isna().to_numpy()
    return values.where(~bad, "").astype(str), bad


_CONVERTERS = {"int": _to_int, "float": _to_float, "bool": _to_bool, "str": _to_str}


def _int(name: str, required: bool = True) -> Column:
    return Column(name, "int", required)


def _float(name: str, required: bool = True) -> Column:
    return Column(name, "float", required)


INDEX = Table(
    "dataset index",
    "`pipeline index`",
    (
        Column("path", "str"),
        _int("camid"),
        _int("pid"),
        Column("split", "str", values=SPLITS),
        Column("camera_name", "str", required=False),
    ),
)
LOCAL_LABELS = Table(
    "local labels",
    "`pipeline cluster-intra` (or `pipeline train-intra`)",
    (_int("index_row"), _int("camid"), _int("local_label")),
)
GLOBAL_CLUSTERS = Table(
    "global clusters",
    "`pipeline cluster-global`",
    (_int("index_row"), _int("camid"), _int("cluster")),
)
REFINED_LABELS = Table(
    "refined labels",
    "`pipeline refine`",
    # training needs only index_row, camid and label (and weight with the cluster weights on)
    (
        _int("index_row"),
        _int("camid"),
        _int("cluster", required=False),
        _int("label"),
        Column("pivot", "bool", required=False),
        Column("discarded", "bool", required=False),
        _float("weight", required=False),
    ),
)
METRICS = Table(
    "metrics",
    "`pipeline evaluate`",
    (
        Column("experiment", "str"),
        Column("dataset", "str"),
        _int("epoch"),
        # the run's seed (-1: not recorded, e.g. the initial model)
        _int("seed", required=False),
        *(_float(name) for name in METRIC_VALUES),
        _int("num_query", required=False),
        _int("num_valid_query", required=False),
        # absent in tables written before re-ranking was added: no re-ranking
        Column("reranking", "bool", required=False),
    ),
)
PER_QUERY = Table(
    "per-query scores",
    "`pipeline evaluate --per-query`",
    # one row per query in evaluation order; a query without a true match has ap NaN, inp 0
    # and first_rank 0, and is left out of every mean
    (_int("query"), _int("pid"), _float("ap"), _float("inp"), _int("first_rank")),
)
# the metrics of the comparison with uncertainty (pipeline.evaluate.uncertainty computes them)
COMPARED_METRICS = SCORED_METRICS
COMPARISON = Table(
    "comparison",
    "`pipeline compare`",
    (
        Column("experiment", "str"),
        # a shared experiment ran once for every seed (the initial model): seeds is 1
        Column("shared", "bool"),
        _int("seeds"),
        _int("num_valid_query"),
        *(_float(f"{m}_{s}") for m in COMPARED_METRICS for s in ("mean", "std")),
        Column("compared_on", "str"),
        _float("difference"),
        _float("low"),
        _float("high"),
        Column("verdict", "str"),
        Column("interval_over", "str"),
    ),
)
COMPARISON_RUNS = Table(
    "comparison runs",
    "`pipeline compare --runs-table`",
    (
        Column("experiment", "str"),
        # the seed its metrics record (a shared experiment's one run: -1 when none is)
        _int("seed"),
        _int("num_query"),
        _int("num_valid_query"),
        *(_float(f"{m}{s}") for m in COMPARED_METRICS for s in ("", "_low", "_high")),
    ),
)
COMPARISON_DIFFERENCES = Table(
    "comparison differences",
    "`pipeline compare --differences-table`",
    (
        Column("experiment", "str"),
        Column("metric", "str"),
        _int("seeds"),
        *(
            _float(name)
            for name in (
                "difference",
                "seed_low",
                "seed_high",
                "query_low",
                "query_high",
                "low",
                "high",
            )
        ),
        Column("verdict", "str"),
    ),
)
# the other columns of a training log depend on the stage and options (docs/formats.md)
TRAINING_LOG = Table("training log", "the training stage", (_int("epoch"),))
