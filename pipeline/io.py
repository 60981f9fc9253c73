"""File I/O shared by every stage: atomic outputs and tables.

Every output file is written under a temporary name in the same directory and renamed into
place only when complete, so a killed job never leaves a file that a later stage accepts.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from pipeline.errors import PipelineError

TABLE_SUFFIXES = (".csv", ".parquet")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` only on success.

    The temporary name keeps the suffix (so writers that look at it, such as pandas or h5py,
    behave) and starts with ``.tmp-`` so that it is obviously not a finished output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".tmp-{path.stem}-", suffix=path.suffix, dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise PipelineError(
            f"{path}: unsupported table format {suffix or '(no suffix)'}; "
            f"use one of {', '.join(TABLE_SUFFIXES)}"
        )
    return suffix


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``df`` atomically as CSV or parquet, chosen by the file's suffix."""
    path = Path(path)
    suffix = _check_suffix(path)
    with atomic_output(path) as tmp:
        if suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)


def read_table(path: str | os.PathLike, required_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a CSV or parquet table and check that ``required_columns`` are present."""
    path = Path(path)
    suffix = _check_suffix(path)
    if not path.is_file():
        raise PipelineError(f"{path}: table not found; run the stage that writes it first")
    try:
        df = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any parse failure is reported the same way
        raise PipelineError(f"{path}: cannot read table ({exc})") from exc
    missing = [c for c in required_columns if c not in df.columns]
    if missing:
        raise PipelineError(
            f"{path}: missing column(s) {', '.join(missing)}; "
            f"found {', '.join(map(str, df.columns))}"
        )
    return df
