"""The HDF5 feature store: round trips, and clear failures on schema problems and on features
that do not line up with the dataset index."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest

from pipeline import __version__
from pipeline.errors import PipelineError
from pipeline.features.store import (
    SCHEMA_VERSION,
    FeatureSet,
    check_features,
    read_features,
    write_features,
)

HOLD_FILE_OPEN = """
import sys, time, h5py
h5 = h5py.File(sys.argv[1], "r+", locking=True)
print("open", flush=True)
time.sleep(60)
"""
ATTRS = {
    "model": "0" * 64,
    "pretrained": "none",
    "arch": "resnet18",
    "height": 256,
    "width": 128,
    "flip": False,
    "split": "query",
    "camera": -1,
}


@pytest.fixture
def index() -> pd.DataFrame:
    """Six images: three train rows, then three query rows (index rows 3, 4, 5)."""
    return pd.DataFrame(
        {
            "path": [f"/data/{name}.jpg" for name in ("a", "b", "c", "d", "e", "f")],
            "camid": [1, 2, 1, 3, 1, 2],
            "pid": [7, 7, 8, -1, 9, 9],
            "split": ["train"] * 3 + ["query"] * 3,
        }
    )


def unit_rows(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def query_features(index) -> FeatureSet:
    rows = index[index["split"] == "query"]
    return FeatureSet.from_index(unit_rows(len(rows)), rows, ATTRS)


def test_float32_round_trip_is_exact_and_keeps_index_rows(tmp_path, index, query_features):
    out = tmp_path / "q.h5"
    write_features(out, query_features)
    fs = read_features(out, index)
    np.testing.assert_array_equal(fs.features, query_features.features)
    np.testing.assert_array_equal(fs.index_row, [3, 4, 5])
    np.testing.assert_array_equal(fs.camid, [3, 1, 2])
    np.testing.assert_array_equal(fs.pid, [-1, 9, 9])
    assert list(fs.path) == ["/data/d.jpg", "/data/e.jpg", "/data/f.jpg"]
    assert fs.attrs == {
        **ATTRS,
        "dtype": "float32",
        "code_version": __version__,
        "schema_version": SCHEMA_VERSION,
    }
    assert not list(tmp_path.glob(".tmp-*"))


def test_float16_storage_round_trips_within_half_precision(tmp_path, index, query_features):
    out = tmp_path / "q.h5"
    write_features(out, query_features, dtype="float16")
    with h5py.File(out, "r", locking=False) as h5:
        assert h5["features"].dtype == np.float16
    fs = read_features(out, index)
    assert fs.features.dtype == np.float32 and fs.attrs["dtype"] == "float16"
    # float16 keeps 11 significant bits: components below 1 are off by at most 2^-12
    np.testing.assert_allclose(fs.features, query_features.features, rtol=0, atol=2**-12)
    assert not np.array_equal(fs.features, query_features.features)


def test_subset_keeps_rows_together(query_features):
    part = query_features.subset(np.array([False, True, True]))
    np.testing.assert_array_equal(part.index_row, [4, 5])
    np.testing.assert_array_equal(part.features, query_features.features[1:])


def test_missing_feature_file_says_which_stage_writes_it(tmp_path):
    with pytest.raises(
        PipelineError, match=r"q\.h5: feature file not found; run `pipeline extract`"
    ):
        read_features(tmp_path / "q.h5")


def test_a_file_that_is_not_hdf5_is_refused(tmp_path):
    out = tmp_path / "q.h5"
    out.write_bytes(b"half a file")
    with pytest.raises(PipelineError, match=r"q\.h5: not a readable HDF5 file .* re-extract"):
        read_features(out)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda h5: h5.__delitem__("camid"), r"missing camid\)"),
        (lambda h5: h5.attrs.__delitem__("model"), r"missing attribute model\)"),
        (lambda h5: h5.attrs.__setitem__("schema_version", 99), "schema version 99, this code"),
        (
            lambda h5: (h5.__delitem__("pid"), h5.create_dataset("pid", data=np.zeros(2))),
            "dataset pid has 2 rows, features have 3; the file is corrupt",
        ),
    ],
    ids=["dataset", "attribute", "version", "rows"],
)
def test_schema_problems_are_named(tmp_path, query_features, damage, message):
    out = tmp_path / "q.h5"
    write_features(out, query_features)
    with h5py.File(out, "a", locking=False) as h5:
        damage(h5)
    with pytest.raises(PipelineError, match=message):
        read_features(out)


def test_features_from_a_changed_index_are_refused(tmp_path, index, query_features):
    out = tmp_path / "q.h5"
    write_features(out, query_features)
    changed = index.copy()
    changed.loc[4, "path"] = "/data/renamed.jpg"
    with pytest.raises(
        PipelineError,
        match=r"1 feature row\(s\) do not match the dataset index, first at feature row 1 "
        r"\(index row 4: /data/e\.jpg vs /data/renamed\.jpg\)",
    ):
        read_features(out, changed)


def test_a_camera_mismatch_is_refused(tmp_path, index, query_features):
    out = tmp_path / "q.h5"
    write_features(out, query_features)
    changed = index.copy()
    changed.loc[5, "camid"] = 6
    with pytest.raises(PipelineError, match="first at feature row 2"):
        read_features(out, changed)


def test_features_from_a_longer_index_are_refused(tmp_path, index, query_features):
    out = tmp_path / "q.h5"
    write_features(out, query_features)
    with pytest.raises(PipelineError, match="index_row values run to 5 but the index has 4 rows"):
        read_features(out, index.iloc[:4])


def test_writer_refuses_bad_dtype_shape_and_attributes(tmp_path, query_features):
    out = tmp_path / "q.h5"
    with pytest.raises(PipelineError, match="dtype must be float32 or float16, got 'int8'"):
        write_features(out, query_features, dtype="int8")
    short = FeatureSet(**{**vars(query_features), "features": query_features.features[:2]})
    with pytest.raises(PipelineError, match=r"features have shape \(2, 16\) but there are 3"):
        write_features(out, short)
    bare = FeatureSet(**{**vars(query_features), "attrs": {"model": "none"}})
    with pytest.raises(PipelineError, match="attributes missing: arch, height, width, flip"):
        write_features(out, bare)
    assert not list(tmp_path.iterdir())


def test_readers_do_not_take_hdf5_file_locks(tmp_path, query_features):
    """Another process holds the file open for writing, with HDF5's lock: a locking reader
    would fail ("unable to lock file"), as every reader does on file systems without locks."""
    out = tmp_path / "q.h5"
    write_features(out, query_features)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_FILE_OPEN, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(OSError, match="unable to lock file"):
            h5py.File(out, "r", locking=True)
        assert len(read_features(out)) == 3
    finally:
        holder.kill()
        holder.wait()


def test_feature_check_names_non_finite_rows():
    x = unit_rows(10, 4)
    x[3, 1] = np.nan
    x[7, 0] = np.inf
    with pytest.raises(
        PipelineError, match=r"feats.h5: 2 feature row\(s\) contain NaN .* rows 3, 7"
    ):
        check_features(x, "feats.h5", chunk_size=4)


def test_feature_check_names_rows_off_the_unit_sphere():
    x = unit_rows(10, 4)
    x[[2, 9]] *= 1.5
    with pytest.raises(
        PipelineError, match=r"2 feature row\(s\) are not L2-normalised.* rows 2, 9"
    ):
        check_features(x, "feats.h5")
    check_features(unit_rows(10, 4).astype(np.float16), "float16 storage is within tolerance")
