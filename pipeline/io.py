"""File I/O shared by every stage: atomic outputs, free space and tables.

Every output file is written under a temporary name in the same directory and renamed into
place only when complete, so a killed job never leaves a file that a later stage accepts. A full
disk ends the write with one :class:`PipelineError` naming the output, and nothing is left at
the output path or under a temporary name. Typed reading of the pipeline's own tables is in
:mod:`pipeline.tables`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".parquet")
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a full device, or a full quota on it
# the random part of tempfile.mkstemp's names: 8 characters of this alphabet
TEMPORARY_RANDOM = r"[a-z0-9_]{8}"


def _temporary_affixes(path: Path) -> tuple[str, str]:
    """Prefix and suffix of the temporary names of ``path``: ``.tmp-<stem>-XXXXXXXX<suffix>``."""
    return f".tmp-{path.stem}-", path.suffix


def no_space_error(path: str | os.PathLike, needed: int | None = None) -> PipelineError:
    """The error for a write to ``path`` that did not fit (or, with ``needed`` bytes, would not
    fit) on its device; the caller has left nothing at ``path``."""
    path = Path(path)
    folder = path.parent
    free = f"{_size(shutil.disk_usage(folder).free)} free" if folder.is_dir() else "folder missing"
    found = (
        f"about {_size(needed)} needed, {free} in {folder}; nothing was written"
        if needed is not None
        else f"the partial file was removed, leaving {free} in {folder}"
    )
    return PipelineError(
        f"{path}: no space left on device ({found}). Free some space, or put the results on a "
        "larger disk, and rerun"
    )


def check_free_space(path: str | os.PathLike, needed: int) -> None:
    """Fail with :func:`no_space_error` unless ``needed`` bytes fit in ``path``'s folder.

    For writers whose failure on a full disk cannot be caught safely (HDF5 may crash the
    process): check before writing. The check cannot see a concurrent writer filling the disk.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(path.parent).free < needed:
        raise no_space_error(path, needed)


def sweep_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of ``path`` that a killed writer left behind; return them.

    :func:`atomic_output` holds an exclusive ``flock`` on its temporary until it is renamed or
    removed, and the kernel drops that lock when the process dies, even by SIGKILL. A temporary
    that can be locked is therefore stale: a concurrent writer of the same output (which a
    Snakemake job, owning its output, never has) keeps its own. Where the file system has no
    locks, nothing is deleted.
    """
    path = Path(path)
    prefix, suffix = _temporary_affixes(path)
    pattern = re.compile(re.escape(prefix) + TEMPORARY_RANDOM + re.escape(suffix))
    if not path.parent.is_dir():
        return []
    removed = []
    with os.scandir(path.parent) as entries:
        candidates = [entry.path for entry in entries if pattern.fullmatch(entry.name)]
    for candidate in candidates:
        try:
            fd = os.open(candidate, os.O_RDONLY)
        except OSError:
            continue  # gone already, or not ours to read
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            Path(candidate).unlink(missing_ok=True)
            removed.append(Path(candidate))
        except OSError:
            continue  # held by a live writer, or no locks on this file system
        finally:
            os.close(fd)
    for stale in removed:
        log.info("removed %s, left by an interrupted write of %s", stale, path)
    return removed


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` only on success.

    The temporary name keeps the suffix (so writers that look at it, such as pandas or h5py,
    behave) and starts with ``.tmp-`` so that it is obviously not a finished output. Stale
    temporaries of the same output are swept first (:func:`sweep_stale_temporaries`). A write
    that fills the disk raises :func:`no_space_error` and leaves nothing behind.
    """
    path = Path(path)
    fd = None
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temporaries(path)
        prefix, suffix = _temporary_affixes(path)
        fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
        tmp = Path(tmp_name)
        with contextlib.suppress(OSError):  # without locks, the sweep leaves it alone
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if fd is not None:
            os.close(fd)  # before measuring the free space: an open file keeps its blocks
            fd = None
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            raise no_space_error(path) from exc
        raise
    finally:
        if fd is not None:
            os.close(fd)


def _size(n: int) -> str:
    """Bytes for people: 512 B, 3.2 KiB, 1.5 GiB."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    power = 0
    while power < len(units) - 1 and n >= 1024 ** (power + 1):
        power += 1
    return f"{n} B" if power == 0 else f"{n / 1024**power:.1f} {units[power]}"


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


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV or parquet table as it is; the pipeline's own tables are read through
    :mod:`pipeline.tables`, which checks their columns and types."""
    path = Path(path)
    suffix = _check_suffix(path)
    if not path.is_file():
        raise PipelineError(f"{path}: table not found; run the stage that writes it first")
    try:
        return pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any parse failure is reported the same way
        raise PipelineError(f"{path}: cannot read table ({exc})") from exc
