"""`pipeline index`: writes the index table, or nothing when a check fails."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import build_parser, main
from pipeline.data.datasets import read_dataset
from pipeline.errors import PipelineError
from pipeline.io import read_table


def run_index(*argv: str) -> None:
    args = build_parser().parse_args(["index", *argv])
    args._run(args)


def copy_demo(demo_root: Path, target: Path) -> Path:
    """A writable copy of the demo dataset's folder tree (files hard-linked, not copied)."""
    for path in demo_root.rglob("*"):
        if path.is_file():
            (target / path.relative_to(demo_root)).parent.mkdir(parents=True, exist_ok=True)
            (target / path.relative_to(demo_root)).hardlink_to(path)
    return target


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_index_writes_table_and_logs_summary(demo_root, tmp_path, caplog, suffix):
    out = tmp_path / f"sub/index{suffix}"
    with caplog.at_level(logging.INFO, logger="pipeline.stages.index"):
        run_index("--dataset", "market1501", "--root", str(demo_root), "--out", str(out))
    written = read_table(out)
    pd.testing.assert_frame_equal(written, read_dataset("market1501", demo_root), check_dtype=False)
    assert written["pid"].dtype == "int64" and written["camid"].dtype == "int64"
    assert f"wrote {out}: {len(written)} images" in caplog.text
    assert "images per camera and split:" in caplog.text
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp-")]


def test_index_verify_passes_on_good_images(demo_root, tmp_path):
    out = tmp_path / "index.csv"
    run_index("--dataset", "market1501", "--root", str(demo_root), "--out", str(out), "--verify")
    assert len(read_table(out)) == len(read_dataset("market1501", demo_root))


def test_index_verify_refuses_corrupt_images(demo_root, tmp_path):
    root = copy_demo(demo_root, tmp_path / "demo")
    victim = sorted((root / "bounding_box_test").iterdir())[3]
    victim.unlink()
    victim.write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "index.csv"
    with pytest.raises(PipelineError, match=rf"1 of \d+ images cannot be decoded:\n  {victim}"):
        run_index("--dataset", "market1501", "--root", str(root), "--out", str(out), "--verify")
    assert list(tmp_path.iterdir()) == [root]


def test_index_refuses_small_cameras(demo_root, tmp_path):
    out = tmp_path / "index.csv"
    with pytest.raises(
        PipelineError,
        match=r"6 camera\(s\) have fewer than 1000 training.*\(images per camera: camera 1: \d+",
    ):
        run_index(
            "--dataset", "market1501", "--root", str(demo_root), "--out", str(out),
            "--min-images-per-camera", "1000",
        )  # fmt: skip
    assert not out.exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--out", "index.txt"], r"index.txt: the index must be .csv or .parquet"),
        (["--min-images-per-camera", "-1"], r"--min-images-per-camera must be 0 or more, got -1"),
    ],
)
def test_index_option_errors(demo_root, tmp_path, option, message):
    argv = ["--dataset", "market1501", "--root", str(demo_root), "--out", str(tmp_path / "i.csv")]
    with pytest.raises(PipelineError, match=message):
        run_index(*argv, *option)


def test_cli_reports_errors_and_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["index", "--dataset", "nope", "--root", str(tmp_path), "--out", "i.csv"])
    assert exit_info.value.code == 2
    assert (
        "pipeline index: error: --dataset must be one of demo, market1501"
        in capsys.readouterr().err
    )


def test_index_on_real_market_subset(market_subset_root, tmp_path):
    out = tmp_path / "index.parquet"
    run_index("--dataset", "market1501", "--root", str(market_subset_root), "--out", str(out))
    index = read_table(out)
    assert len(index) == 764 + 246 + 493
    assert index["path"].iloc[0].startswith(str(market_subset_root / "bounding_box_train"))
