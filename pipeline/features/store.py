"""The HDF5 feature store: the one place that knows the schema (see docs/formats.md).

A feature file holds, row-aligned:

- ``features``  N x D, float32 or float16, chunked by rows; L2-normalised embeddings
- ``index_row`` N int64, the row of the dataset index each embedding belongs to
- ``camid``     N int64, camera id copied from the index
- ``pid``       N int64, identity copied from the index (-1 when unknown or junk)
- ``path``      N utf-8 strings, image path copied from the index

and attributes ``model`` (checkpoint sha256, or ``imagenet`` / ``none``), ``arch``, ``height``,
``width``, ``dtype``, ``flip``, ``split``, ``code_version`` and ``schema_version``.

Files are written under a temporary name and renamed when complete (:func:`write_features`),
and never modified afterwards. Readers therefore open them with HDF5 file locking disabled:
locking protects concurrent writers, there are none, and on many network file systems
(NFS, Lustre, GPFS) the lock call itself fails with "unable to lock file".
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import __version__
from pipeline.cluster.labels import first_rows
from pipeline.errors import PipelineError
from pipeline.io import atomic_output, check_free_space

SCHEMA_VERSION = 1
CHUNK_ROWS = 1024  # feature rows per HDF5 chunk
# HDF5's own bytes beyond the data, bounded from measurements (about 42 per path and 10 KiB of
# metadata for files of 1 to 20,000 rows); the slack covers what the bound misses
PATH_OVERHEAD = 64
FILE_OVERHEAD = 64 * 2**10
FREE_SPACE_SLACK = 2**20
ROW_DATASETS = ("index_row", "camid", "pid", "path")
NORM_TOLERANCE = 1e-2  # float16 storage alone moves a unit norm by about 1e-3
REQUIRED_ATTRS = ("model", "arch", "height", "width", "dtype", "flip", "split", "schema_version")


@dataclass
class FeatureSet:
    """Row-aligned embeddings and their index metadata."""

    features: np.ndarray  # (N, D) float32
    index_row: np.ndarray  # (N,) int64
    camid: np.ndarray  # (N,) int64
    pid: np.ndarray  # (N,) int64
    path: np.ndarray  # (N,) object (str)
    attrs: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.index_row)

    def subset(self, mask: np.ndarray) -> FeatureSet:
        """Rows selected by a boolean mask or an index array."""
        return FeatureSet(
            self.features[mask],
            self.index_row[mask],
            self.camid[mask],
            self.pid[mask],
            self.path[mask],
            dict(self.attrs),
        )

    @classmethod
    def from_index(cls, features: np.ndarray, index: pd.DataFrame, attrs: dict) -> FeatureSet:
        """Pair embeddings with the index rows they were computed from (``index`` in order)."""
        return cls(
            np.asarray(features),
            index.index.to_numpy(dtype=np.int64),
            index["camid"].to_numpy(dtype=np.int64),
            index["pid"].to_numpy(dtype=np.int64),
            index["path"].astype(str).to_numpy(dtype=object),
            dict(attrs),
        )


def write_features(path: str | os.PathLike, fs: FeatureSet, dtype: str = "float32") -> None:
    """Write ``fs`` atomically; ``dtype`` is ``float32`` or ``float16`` for the features."""
    import h5py

    if dtype not in ("float32", "float16"):
        raise PipelineError(f"feature dtype must be float32 or float16, got {dtype!r}")
    n = len(fs)
    if fs.features.ndim != 2 or fs.features.shape[0] != n:
        raise PipelineError(
            f"{path}: features have shape {fs.features.shape} but there are {n} index rows"
        )
    attrs = {
        **fs.attrs,
        "dtype": dtype,
        "code_version": __version__,
        "schema_version": SCHEMA_VERSION,
    }
    missing = [a for a in REQUIRED_ATTRS if a not in attrs]
    if missing:
        raise PipelineError(f"{path}: feature attributes missing: {', '.join(missing)}")
    check_room_for_features(path, fs.path, fs.features.shape[1], dtype)
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w", locking=False) as h5:
            chunk_rows = max(1, min(n, CHUNK_ROWS))
            h5.create_dataset(
                "features",
                data=fs.features.astype(dtype, copy=False),
                chunks=(chunk_rows, fs.features.shape[1]) if n else None,
            )
            h5.create_dataset("index_row", data=fs.index_row.astype(np.int64))
            h5.create_dataset("camid", data=fs.camid.astype(np.int64))
            h5.create_dataset("pid", data=fs.pid.astype(np.int64))
            h5.create_dataset(
                "path", data=np.asarray(fs.path, dtype=object), dtype=h5py.string_dtype()
            )
            for key, value in attrs.items():
                h5.attrs[key] = value


def check_room_for_features(
    path: str | os.PathLike, paths: Sequence[str], dim: int, dtype: str
) -> None:
    """Fail naming ``path`` unless a feature file of ``dim``-d ``dtype`` features of the images
    ``paths`` fits in its folder. HDF5 does not survive a full disk (h5py may crash the
    process), so :func:`write_features` checks first; extraction can check before it starts.

    The size is bounded from above: the feature chunks (the last one is stored whole), the row
    datasets, the paths and HDF5's overhead.
    """
    n = len(paths)
    chunk_rows = max(1, min(n, CHUNK_ROWS))
    stored_rows = -(-n // chunk_rows) * chunk_rows
    path_bytes = sum(len(str(p).encode("utf-8", "surrogateescape")) for p in paths)
    bound = (
        stored_rows * dim * np.dtype(dtype).itemsize
        + n * len(("index_row", "camid", "pid")) * np.dtype(np.int64).itemsize
        + path_bytes
        + n * PATH_OVERHEAD
        + FILE_OVERHEAD
    )
    check_free_space(path, bound + FREE_SPACE_SLACK)


def read_features(path: str | os.PathLike, index: pd.DataFrame | None = None) -> FeatureSet:
    """Read and validate a feature file; features are returned as float32.

    With ``index`` (the dataset index table), also check that every row's ``index_row``,
    ``camid`` and ``path`` agree with it, so features can never be paired with the wrong images.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: feature file not found; run `pipeline extract` first")
    try:
        h5 = h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise PipelineError(
            f"{path}: not a readable HDF5 file ({exc}); delete it and re-extract"
        ) from exc
    with h5:
        missing = [d for d in ("features", *ROW_DATASETS) if d not in h5]
        missing += [f"attribute {a}" for a in REQUIRED_ATTRS if a not in h5.attrs]
        if missing:
            raise PipelineError(
                f"{path}: not a feature file of this pipeline (missing {', '.join(missing)}); "
                "re-extract it with `pipeline extract`"
            )
        if int(h5.attrs["schema_version"]) != SCHEMA_VERSION:
            raise PipelineError(
                f"{path}: feature schema version {h5.attrs['schema_version']}, this code reads "
                f"{SCHEMA_VERSION}; re-extract it"
            )
        fs = FeatureSet(
            features=h5["features"][...].astype(np.float32, copy=False),
            index_row=h5["index_row"][...].astype(np.int64),
            camid=h5["camid"][...].astype(np.int64),
            pid=h5["pid"][...].astype(np.int64),
            path=h5["path"].asstr()[...].astype(object),
            attrs={k: _plain(v) for k, v in h5.attrs.items()},
        )
    n = fs.features.shape[0]
    for name in ROW_DATASETS:
        if len(getattr(fs, name)) != n:
            raise PipelineError(
                f"{path}: dataset {name} has {len(getattr(fs, name))} rows, features have {n}; "
                "the file is corrupt, re-extract it"
            )
    repeated = pd.Series(fs.index_row).duplicated().to_numpy()
    if repeated.any():
        first = int(np.flatnonzero(repeated)[0])
        raise PipelineError(
            f"{path}: {int(repeated.sum())} feature row(s) repeat an index row, first at feature "
            f"row {first} (index row {fs.index_row[first]}: {fs.path[first]}); every image must "
            "have one feature row. The file was not written by `pipeline extract`: re-extract it"
        )
    check_features(fs.features, path)
    if index is not None:
        check_alignment(fs, index, path)
    return fs


def check_features(features: np.ndarray, source, chunk_size: int = 65536) -> None:
    """Fail unless every row of ``features`` is finite and has unit L2 norm.

    Every reader of a feature file runs it (:func:`read_features`): distances ``2 - 2 x.y`` and
    cosine similarities mean what the stages assume only for unit vectors. ``source`` names the
    input in the message. The check runs ``chunk_size`` rows at a time so that it never holds an
    N x D boolean mask.
    """
    if features.ndim != 2:
        raise PipelineError(f"{source}: features must be a 2-d array, got shape {features.shape}")
    non_finite, off_norm = [], []
    for start in range(0, len(features), chunk_size):
        block = np.asarray(features[start : start + chunk_size], dtype=np.float32)
        finite = np.isfinite(block).all(axis=1)
        norms = np.linalg.norm(np.where(finite[:, None], block, 0.0), axis=1)
        non_finite.append(start + np.flatnonzero(~finite))
        off_norm.append(start + np.flatnonzero(finite & (np.abs(norms - 1.0) > NORM_TOLERANCE)))
    bad = np.concatenate(non_finite) if non_finite else np.empty(0, dtype=np.int64)
    if len(bad):
        raise PipelineError(
            f"{source}: {len(bad)} feature row(s) contain NaN or infinity, first rows "
            f"{first_rows(bad)}; re-extract the features (the model may have diverged)"
        )
    bad = np.concatenate(off_norm) if off_norm else np.empty(0, dtype=np.int64)
    if len(bad):
        raise PipelineError(
            f"{source}: {len(bad)} feature row(s) are not L2-normalised (norm off 1 by more than "
            f"{NORM_TOLERANCE}), first rows {first_rows(bad)}; features must be written by "
            "`pipeline extract`, which normalises them"
        )


def check_alignment(fs: FeatureSet, index: pd.DataFrame, path: str | os.PathLike) -> None:
    """Fail unless each feature row matches the dataset index row it names."""
    rows = fs.index_row
    if len(rows) and (rows.min() < 0 or rows.max() >= len(index)):
        raise PipelineError(
            f"{path}: index_row values run to {rows.max()} but the index has {len(index)} rows; "
            "the features were extracted from another index, re-extract them"
        )
    expected_cam = index["camid"].to_numpy(dtype=np.int64)[rows]
    expected_path = index["path"].astype(str).to_numpy(dtype=object)[rows]
    bad = np.flatnonzero((expected_cam != fs.camid) | (expected_path != fs.path))
    if len(bad):
        first = bad[0]
        raise PipelineError(
            f"{path}: {len(bad)} feature row(s) do not match the dataset index, first at feature "
            f"row {first} (index row {rows[first]}: {fs.path[first]} vs {expected_path[first]}); "
            "the index changed since extraction, re-extract the features"
        )


def _plain(value):
    """HDF5 attribute -> plain Python value (numpy scalars and bytes become int/float/str)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
