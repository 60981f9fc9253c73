"""The table of hostile inputs (issue 17): each one ends in one clear message, never a traceback
or a silently wrong result. Stages run through ``pipeline.cli.main`` as a user runs them.

Disk-full cases write to a small tmpfs; they are skipped where one cannot be mounted (mounting
needs root).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.cli import main
from pipeline.data.images import ResizedImageDataset
from pipeline.data.validate import check_intra_settings
from pipeline.errors import PipelineError
from pipeline.features.store import FeatureSet, read_features, write_features
from pipeline.io import atomic_output, sweep_stale_temporaries, write_table
from pipeline.models.checkpoint import load_checkpoint, save_checkpoint
from pipeline.stages.cluster_global import write_summary
from pipeline.tables import GLOBAL_CLUSTERS, INDEX, LOCAL_LABELS, METRICS, REFINED_LABELS
from tests.test_datasets import JPEG, make_images, market_tree

REPO = Path(__file__).resolve().parents[1]
FEATURE_ATTRS = {"model": "m", "arch": "resnet18", "height": 8, "width": 4, "flip": False}


def fails(capsys, *argv: str) -> str:
    """Run ``pipeline <argv>``; assert it exits 2 with one error and no traceback; the error."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    assert err.startswith(f"pipeline {argv[0]}: error: ") and err.count(": error: ") == 1, err
    return err


def index_args(root: Path, out: Path, *extra: str, dataset: str = "market1501") -> list[str]:
    return ["index", "--dataset", dataset, "--root", str(root), "--out", str(out), *extra]


def feature_set(n: int, split: str = "train", paths=None) -> FeatureSet:
    features = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    paths = paths if paths is not None else [f"/images/{i}.jpg" for i in range(n)]
    return FeatureSet(
        features,
        np.arange(n, dtype=np.int64),
        np.arange(n, dtype=np.int64) % 2 + 1,
        np.arange(n, dtype=np.int64) // 2,
        np.array(paths, dtype=object),
        {**FEATURE_ATTRS, "split": split},
    )


# --------------------------------------------------------------------- 3. disk full


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory) -> Path:
    """A 1 MiB tmpfs: any write of more than that fills it."""
    mountpoint = tmp_path_factory.mktemp("tmpfs")
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)],
            capture_output=True,
            text=True,
        )
    except OSError as exc:  # no mount command
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    yield mountpoint
    subprocess.run(["umount", str(mountpoint)], check=True)


def assert_no_space(excinfo, path: Path) -> None:
    message = str(excinfo.value)
    assert message.startswith(f"{path}: no space left on device")
    assert "Free some space" in message
    assert list(path.parent.iterdir()) == []  # neither the output nor a temporary


@pytest.mark.parametrize("name", ["table.csv", "table.parquet"])
def test_disk_full_table(full_disk, name):
    big = pd.DataFrame({"x": np.random.default_rng(0).random(400_000)})
    with pytest.raises(PipelineError) as excinfo:
        write_table(big, full_disk / name)
    assert_no_space(excinfo, full_disk / name)


def test_disk_full_checkpoint(full_disk):
    """torch's zip writer would report 'unexpected pos'."""
    with pytest.raises(PipelineError) as excinfo:
        save_checkpoint(full_disk / "model.pt", {"model": torch.zeros(1_000_000)})
    assert_no_space(excinfo, full_disk / "model.pt")


def test_disk_full_json_summary(full_disk):
    with pytest.raises(PipelineError) as excinfo:
        write_summary({"text": "x" * 2_000_000}, full_disk / "summary.json")
    assert_no_space(excinfo, full_disk / "summary.json")


def test_disk_full_features_are_refused_before_hdf5_writes(full_disk):
    """h5py can crash the process on ENOSPC: the free space is checked first."""
    fs = feature_set(3000)
    fs.features = np.ones((3000, 128), dtype=np.float32)
    with pytest.raises(PipelineError) as excinfo:
        write_features(full_disk / "train.h5", fs)
    assert_no_space(excinfo, full_disk / "train.h5")
    assert "needed" in str(excinfo.value)


def test_disk_full_extraction_fails_before_extracting(full_disk, tmp_path, capsys):
    index = tmp_path / "index.csv"
    paths = [str(tmp_path / f"{i}.jpg") for i in range(600)]
    pd.DataFrame({"path": paths, "camid": 1, "pid": 1, "split": "query"}).to_csv(index, index=False)
    torch.manual_seed(0)
    from pipeline.models import build_model

    model = build_model("resnet18")
    save_checkpoint(
        tmp_path / "init.pt",
        {"model_config": model.config, "model": model.state_dict(), "pretrained": "none"},
    )
    out = full_disk / "query.h5"
    argv = ["extract", "--index", str(index), "--checkpoint", str(tmp_path / "init.pt")]
    err = fails(capsys, *argv, "--split", "query", "--out", str(out))
    assert f"{out}: no space left on device (about" in err
    assert list(full_disk.iterdir()) == []


# --------------------------------------------------------------------- 4. interrupted jobs

HOLD_A_TEMPORARY = """
import sys, time
from pipeline.io import atomic_output
with atomic_output(sys.argv[1]) as tmp:
    tmp.write_bytes(b"x" * 100_000)
    print("writing", flush=True)
    time.sleep(120)
"""


def test_a_killed_writers_temporary_is_swept_and_a_live_ones_kept(tmp_path):
    out = tmp_path / "model.pt"
    writer = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_TEMPORARY, str(out)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert writer.stdout.readline() == "writing\n"
        [temporary] = tmp_path.glob(".tmp-model-*.pt")
        assert sweep_stale_temporaries(out) == []  # a live writer holds its lock
        assert temporary.exists()
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    other = tmp_path / ".tmp-modelx-abcdefgh.pt"  # another output's temporary
    other.write_bytes(b"")
    save_checkpoint(out, {"model": torch.zeros(2)})
    assert not temporary.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "model.pt"]


def test_ctrl_c_exits_130_with_one_line(tmp_path, capsys, monkeypatch):
    def interrupted(name, root):
        raise KeyboardInterrupt

    monkeypatch.setattr("pipeline.stages.index.read_dataset", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        main(index_args(tmp_path, tmp_path / "index.csv"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 130
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("pipeline index: interrupted;") and "rerunning" in err


# --------------------------------------------------------------------- 5. tracebacks -> errors


@pytest.fixture
def market(tmp_path) -> Path:
    return market_tree(tmp_path / "market")


def test_symlink_loop_in_a_split_folder(market, tmp_path, capsys):
    loop = market / "bounding_box_train" / "0003_c2s1_000001_00.jpg"
    loop.symlink_to(loop.name)
    err = fails(capsys, *index_args(market, tmp_path / "index.csv"))
    assert f"{loop.parent}: 1 image entr(ies) cannot be indexed" in err
    assert "0003_c2s1_000001_00.jpg (symbolic link loop)" in err


@pytest.mark.parametrize("verify", [[], ["--verify"]])
def test_dangling_symlink_is_reported_not_skipped(market, tmp_path, capsys, verify):
    link = market / "query" / "0008_c2s1_000001_00.jpg"
    link.symlink_to(tmp_path / "gone.jpg")
    err = fails(capsys, *index_args(market, tmp_path / "index.csv", *verify))
    assert f"0008_c2s1_000001_00.jpg (dangling symbolic link to {tmp_path / 'gone.jpg'})" in err
    assert not (tmp_path / "index.csv").exists()


def test_file_name_that_is_not_utf8(market, tmp_path, capsys):
    folder = os.fsencode(market / "bounding_box_train")
    try:
        Path(os.fsdecode(folder + b"/0003_c2s1_\xff.jpg")).write_bytes(JPEG)
    except OSError as exc:  # some file systems refuse such names
        pytest.skip(f"this file system refuses a non-UTF-8 name: {exc}")
    err = fails(capsys, *index_args(market, tmp_path / "index.csv"))
    assert r"b'0003_c2s1_\xff.jpg' (the name is not valid UTF-8: rename it)" in err


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("99999999999999999999_c2s1_000001_00.jpg", "person id"),
        ("0003_c99999999999999999999s1_000001_00.jpg", "camera id"),
    ],
)
def test_id_too_large_for_int64(market, tmp_path, capsys, name, what):
    make_images(market / "bounding_box_train", [name])
    err = fails(capsys, *index_args(market, tmp_path / "index.csv"))
    assert f"1 {what} value(s) too large for a 64-bit integer: {name}; renumber them" in err


def test_manifest_pid_too_large_for_int64(tmp_path, capsys):
    make_images(tmp_path, ["a.jpg"])
    (tmp_path / "m.csv").write_text("path,camera,pid\na.jpg,1,9223372036854775808\n")
    err = fails(capsys, *index_args(tmp_path / "m.csv", tmp_path / "i.csv", dataset="manifest"))
    assert "1 person id value(s) too large for a 64-bit integer: line 2" in err


@pytest.fixture
def refined_inputs(tmp_path) -> Path:
    """An index of 4 training images and refined labels of them."""
    paths = [str(tmp_path / f"{i}.jpg") for i in range(4)]
    index = pd.DataFrame({"path": paths, "camid": [1, 1, 2, 2], "pid": 0, "split": "train"})
    index.to_csv(tmp_path / "index.csv", index=False)
    return tmp_path


@pytest.mark.parametrize(("label", "shown"), [("2.5", "2.5"), ("x", "'x'"), ("", "an empty cell")])
def test_non_integer_label_of_train_inter(refined_inputs, capsys, label, shown):
    labels = refined_inputs / "labels.csv"
    labels.write_text(f"index_row,camid,label,weight\n0,1,0,1\n1,1,{label},1\n2,2,1,1\n3,2,1,1\n")
    argv = ["train-inter", "--index", str(refined_inputs / "index.csv"), "--labels", str(labels)]
    argv += ["--init", "never-read.pt", "--out-checkpoint", "m.pt", "--log", "log.csv"]
    argv += ["--epochs", "1"]
    err = fails(capsys, *argv)
    assert (
        f"{labels}: column 'label' of the refined labels table must hold integers, but 1 row(s) "
        f"do not, first row 1 (line 3): {shown}; the file was edited or damaged, rerun "
        "`pipeline refine`"
    ) in err


def test_non_integer_label_of_collect_local_labels(tmp_path, capsys):
    table = tmp_path / "cam1.csv"
    table.write_text("index_row,camid,local_label\n0,1,0\n1,1,0.5\n")
    err = fails(capsys, "collect-local-labels", "--tables", str(table), "--out", "out.csv")
    assert "column 'local_label' of the local labels table must hold integers" in err
    assert "first row 1 (line 3): 0.5" in err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--k", "0"], "--k must be 1 or more, got 0"),
        (["--method", "dbscan", "--k1", "1"], "--k1 must be 2 or more, got 1"),
        (["--method", "dbscan", "--eps", "1.5"], "--eps must lie strictly between 0 and 1"),
    ],
)
def test_cluster_global_options_that_cannot_work(tmp_path, capsys, options, message):
    argv = ["cluster-global", "--features", str(tmp_path / "f.h5"), "--out", "c.csv"]
    err = fails(capsys, *argv, "--summary", "s.json", *options)
    assert message in err


def test_decode_error_in_a_loader_worker_is_one_line(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG truncated")
    loader = torch.utils.data.DataLoader(ResizedImageDataset([str(broken)], 8, 4), num_workers=1)
    with pytest.raises(PipelineError) as excinfo:
        next(iter(loader))
    message = str(excinfo.value)
    assert message.startswith(f"{broken}: cannot decode image (")
    assert "Traceback" not in message and "worker" not in message


# --------------------------------------------------------------------- 6. no silent wrong input


def test_manifest_camera_that_is_not_an_integer_among_integers(tmp_path, capsys):
    make_images(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    (tmp_path / "m.csv").write_text("path,camera\na.jpg,1\nb.jpg,1.5\nc.jpg,2\n")
    err = fails(capsys, *index_args(tmp_path / "m.csv", tmp_path / "i.csv", dataset="manifest"))
    assert "1 row(s) have a camera that is a number but not an integer: line 3 (1.5)" in err


def test_manifest_camera_name_among_integers(tmp_path, capsys):
    make_images(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    (tmp_path / "m.csv").write_text("path,camera\na.jpg,1\nb.jpg,lobby\nc.jpg,2\n")
    err = fails(capsys, *index_args(tmp_path / "m.csv", tmp_path / "i.csv", dataset="manifest"))
    assert (
        "1 row(s) have a name as camera while the other rows have integers: line 3 (lobby)" in err
    )


@pytest.mark.parametrize(
    ("table", "text", "message"),
    [
        (
            GLOBAL_CLUSTERS,
            "index_row,camid,cluster\n0,1,2\n1,1,2.5\n",
            "column 'cluster' of the global clusters table must hold integers, but 1 row(s) do "
            "not, first row 1 (line 3): 2.5",
        ),
        (
            LOCAL_LABELS,
            "index_row,camid,local_label\n0,1,3\n1,1,\n",
            "column 'local_label' of the local labels table must hold integers, but 1 row(s) do "
            "not, first row 1 (line 3): an empty cell",
        ),
        (
            LOCAL_LABELS,
            "index_row,camid,local_label\n0,1,99999999999999999999\n",
            "first row 0 (line 2): 99999999999999999999",
        ),
        (
            REFINED_LABELS,
            "index_row,camid,label,pivot\n0,1,0,maybe\n",
            "column 'pivot' of the refined labels table must hold True or False",
        ),
        (
            INDEX,
            "path,camid,pid,split\n/a.jpg,1,1,test\n",
            "column 'split' of the dataset index table must hold one of train, query, gallery",
        ),
        (METRICS, "experiment,dataset,epoch,mAP\nx,d,1,0.5\n", "missing column(s) rank1, rank5"),
        (
            METRICS,
            "experiment,dataset,epoch,mAP,rank1,rank5,rank10,mINP\nx,d,1,high,1,1,1,1\n",
            "column 'mAP' of the metrics table must hold numbers",
        ),
    ],
)
def test_every_table_read_checks_its_column_types(tmp_path, table, text, message):
    path = tmp_path / "table.csv"
    path.write_text(text)
    with pytest.raises(PipelineError, match=re.escape(message)):
        table.read(path)


def test_table_types_are_checked_in_parquet_too(tmp_path):
    path = tmp_path / "clusters.parquet"
    pd.DataFrame({"index_row": [0, 1], "camid": [1, 1], "cluster": [0.0, np.nan]}).to_parquet(path)
    with pytest.raises(PipelineError, match=r"'cluster'.*first row 1: an empty cell"):
        GLOBAL_CLUSTERS.read(path)


def test_well_typed_tables_are_read_with_their_dtypes(tmp_path):
    path = tmp_path / "refined.csv"
    path.write_text("index_row,camid,label,pivot,weight,extra\n0,1,2.0,true,,x\n1,2,-1,0,0.5,y\n")
    table = REFINED_LABELS.read(path)
    assert table["label"].tolist() == [2, -1] and table["label"].dtype == "int64"
    assert table["pivot"].tolist() == [True, False] and table["pivot"].dtype == bool
    assert np.isnan(table["weight"][0]) and table["extra"].tolist() == ["x", "y"]


def test_feature_file_with_a_repeated_row(tmp_path):
    fs = feature_set(4)
    fs.index_row[3] = 1
    write_features(tmp_path / "train.h5", fs)
    with pytest.raises(PipelineError, match=r"1 feature row\(s\) repeat an index row, first at "):
        read_features(tmp_path / "train.h5")


def test_same_image_twice_through_a_symlinked_folder(market, tmp_path, capsys):
    (market / "bounding_box_test" / "alias").symlink_to(market / "query")
    manifest = tmp_path / "m.csv"
    real = market / "query" / "0007_c5s1_000100_00.png"
    manifest.write_text(f"path,camera\n{real},1\n{market}/bounding_box_test/alias/{real.name},1\n")
    err = fails(capsys, *index_args(manifest, tmp_path / "i.csv", dataset="manifest"))
    assert f"1 image file(s) are listed more than once through symbolic links: {real} is " in err


def test_same_image_twice_through_a_symlinked_file(market, tmp_path, capsys):
    target = market / "query" / "0007_c5s1_000100_00.png"
    (market / "bounding_box_test" / "0007_c2s1_000999_00.png").symlink_to(target)
    err = fails(capsys, *index_args(market, tmp_path / "index.csv", "--min-images-per-camera", "1"))
    assert f"{target} is listed as " in err and "(query) and " in err


def test_k_beyond_the_images_warns(tmp_path, capsys, caplog):
    write_features(tmp_path / "train.h5", feature_set(5))
    argv = ["cluster-global", "--features", str(tmp_path / "train.h5"), "--k", "15"]
    argv += ["--min-size", "1", "--out", str(tmp_path / "c.csv"), "--summary", str(tmp_path / "s")]
    with caplog.at_level(logging.WARNING, logger="pipeline.stages.cluster_global"):
        main(argv)
    assert "--k 15 asks for 15 neighbours per image, but" in caplog.text
    assert "holds 5 image(s): each image has only 4" in caplog.text


def test_ratio_that_min_images_per_camera_cannot_serve_is_refused_at_start_up():
    check_intra_settings(min_images_per_camera=10, ratio=5)
    with pytest.raises(PipelineError, match=r"min_images_per_camera 5 admits cameras that intra"):
        check_intra_settings(min_images_per_camera=5, ratio=3)


# --------------------------------------------------------------------- 7. messages


def test_feature_file_as_checkpoint_says_what_it_is(tmp_path, capsys):
    write_features(tmp_path / "train.h5", feature_set(2))
    index = tmp_path / "index.csv"
    pd.DataFrame({"path": ["/a.jpg"], "camid": 1, "pid": 1, "split": "query"}).to_csv(
        index, index=False
    )
    argv = ["extract", "--index", str(index), "--checkpoint", str(tmp_path / "train.h5")]
    err = fails(capsys, *argv, "--split", "query", "--out", str(tmp_path / "q.h5"))
    assert (
        "train.h5: an HDF5 file (a feature file of `pipeline extract`?), not a checkpoint; " in err
    )
    assert "--checkpoint wants a model checkpoint (.pt)" in err
    assert "delete" not in err


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_code_in_a_checkpoint_is_refused_without_torchs_hint(tmp_path):
    marker = tmp_path / "the payload ran"
    with open(tmp_path / "evil.pt", "wb") as handle:
        torch.save({"model": Payload(marker)}, handle, pickle_module=pickle)
    with pytest.raises(PipelineError) as excinfo:
        load_checkpoint(tmp_path / "evil.pt", "--init")
    message = str(excinfo.value)
    assert "refused: the file holds Python objects other than tensors" in message
    assert "--init wants a model checkpoint" in message
    assert "weights_only" not in message and excinfo.value.__cause__ is None
    assert not marker.exists()


def test_pipeline_error_of_a_worker_keeps_its_message():
    text = textwrap.dedent(
        """\
        Caught PipelineError in DataLoader worker process 3.
        Original Traceback (most recent call last):
          File "x.py", line 1, in <module>
        pipeline.errors.PipelineError: /a.png: cannot decode image
        second line
        """
    )
    assert str(PipelineError(text)) == "/a.png: cannot decode image\nsecond line"
    assert str(PipelineError("Caught nothing")) == "Caught nothing"


def test_atomic_output_keeps_other_errors_as_they_are(tmp_path):
    with pytest.raises(ValueError, match="boom"), atomic_output(tmp_path / "x.csv"):
        raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []
