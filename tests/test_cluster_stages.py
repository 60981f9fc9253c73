"""The cluster-intra, cluster-global and refine stages end to end, and their input errors."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.cluster.synthetic import planted_features
from pipeline.errors import PipelineError
from pipeline.features.store import FeatureSet, write_features
from pipeline.io import read_table, write_table

ATTRS = {"model": "none", "arch": "test", "height": 8, "width": 4, "flip": False, "split": "train"}


def save_features(path, features, camids, pids):
    n = len(features)
    fs = FeatureSet(
        features=features,
        index_row=np.arange(10, 10 + n, dtype=np.int64),
        camid=camids,
        pid=pids,
        path=np.array([f"img{i}.jpg" for i in range(n)], dtype=object),
        attrs=dict(ATTRS),
    )
    write_features(path, fs)
    return fs


def run(*argv):
    main([str(a) for a in argv])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Features of 360 images over 3 cameras, with their local labels and global clusters."""
    root = tmp_path_factory.mktemp("stages")
    features, camids, pids = planted_features(360, dim=32, n_cams=3, seed=2)
    save_features(root / "train.h5", features, camids, pids)
    for camera in (1, 2, 3):
        run(
            "cluster-intra",
            "--features",
            root / "train.h5",
            "--camera",
            camera,
            "--out",
            root / f"local{camera}.csv",
        )
    run(
        "cluster-global",
        "--features",
        root / "train.h5",
        "--out",
        root / "clusters.parquet",
        "--summary",
        root / "clusters.json",
        "--seed",
        3,
        "--out-neighbours",
        root / "neighbours.npz",
    )
    return root


def test_cluster_intra_writes_images_over_ratio_local_labels(workdir):
    table = read_table(workdir / "local2.csv")
    assert list(table.columns) == ["index_row", "camid", "local_label"]
    assert (table["camid"] == 2).all()
    assert sorted(table["local_label"].unique()) == list(range(len(table) // 5))


def test_cluster_intra_sparse_jaccard(workdir, tmp_path):
    run(
        "cluster-intra",
        "--features",
        workdir / "train.h5",
        "--camera",
        1,
        "--out",
        tmp_path / "l.csv",
        "--distance",
        "jaccard",
        "--sparse-threshold",
        10,
    )
    table = read_table(tmp_path / "l.csv")
    assert table["local_label"].nunique() == len(table) // 5


def test_cluster_global_table_and_summary(workdir):
    table = read_table(workdir / "clusters.parquet")
    assert list(table.columns) == ["index_row", "camid", "cluster"]
    summary = json.loads((workdir / "clusters.json").read_text())
    assert summary["n_clusters"] == table["cluster"].max() + 1
    assert summary["n_outliers"] == (table["cluster"] < 0).sum()
    assert 0 < summary["quality"]["precision"] <= 1


def test_cluster_global_dbscan(workdir, tmp_path):
    run(
        "cluster-global",
        "--features",
        workdir / "train.h5",
        "--out",
        tmp_path / "c.csv",
        "--summary",
        tmp_path / "c.json",
        "--method",
        "dbscan",
    )
    assert json.loads((tmp_path / "c.json").read_text())["method"] == "dbscan"


@pytest.mark.parametrize("mode", ["paper", "reference"])
def test_refine_writes_the_refined_labels_table(workdir, tmp_path, mode):
    run(
        "refine",
        "--clusters",
        workdir / "clusters.parquet",
        "--features",
        workdir / "train.h5",
        "--local-labels",
        *(workdir / f"local{c}.csv" for c in (1, 2, 3)),
        "--epoch",
        2,
        "--total-epochs",
        4,
        "--mode",
        mode,
        "--neighbours",
        workdir / "neighbours.npz",
        "--out",
        tmp_path / "refined.csv",
        "--summary",
        tmp_path / "refined.json",
    )
    table = read_table(tmp_path / "refined.csv")
    summary = json.loads((tmp_path / "refined.json").read_text())
    assert list(table.columns) == [
        "index_row",
        "camid",
        "cluster",
        "label",
        "pivot",
        "discarded",
        "weight",
    ]
    assert (table.loc[table["discarded"], "label"] == -1).all()
    assert (table.loc[table["label"] < 0, "weight"] == 0).all()
    assert not table.loc[table["cluster"] < 0, "pivot"].any()
    expected_p = 1.0 if mode == "reference" else 0.5  # cosine at epoch 2 of 4
    assert summary["discard_probability"] == pytest.approx(expected_p)
    assert summary["n_discarded"] == table["discarded"].sum()
    assert summary["n_pivots"] == table["pivot"].sum()
    assert set(summary["quality"]) == {"global", "refined", "local"}


def test_refine_is_reproducible_for_a_seed(workdir, tmp_path):
    args = [
        "refine",
        "--clusters",
        workdir / "clusters.parquet",
        "--features",
        workdir / "train.h5",
        "--local-labels",
        *(workdir / f"local{c}.csv" for c in (1, 2, 3)),
        "--epoch",
        1,
        "--total-epochs",
        4,
        "--seed",
        9,
        "--summary",
        tmp_path / "s.json",
    ]
    run(*args, "--out", tmp_path / "a.csv")
    run(*args, "--out", tmp_path / "b.csv")
    pd.testing.assert_frame_equal(read_table(tmp_path / "a.csv"), read_table(tmp_path / "b.csv"))


# --- bad input ---------------------------------------------------------------------------


def call_refine(
    workdir, tmp_path, clusters=None, local=None, weight_floor=0.0, neighbours=None, mode="paper"
):
    from argparse import Namespace

    from pipeline.stages import refine

    refine.run(
        Namespace(
            clusters=clusters or workdir / "clusters.parquet",
            features=workdir / "train.h5",
            local_labels=local or [workdir / f"local{c}.csv" for c in (1, 2, 3)],
            epoch=0,
            total_epochs=2,
            schedule="cosine",
            p0=1.0,
            mode=mode,
            pivot_k=15,
            knn="exact",
            weight_floor=weight_floor,
            neighbours=neighbours,
            seed=0,
            out=tmp_path / "r.csv",
            summary=tmp_path / "r.json",
        )
    )


def test_missing_camera_local_labels_are_named(workdir, tmp_path):
    with pytest.raises(
        PipelineError, match=r"no local label for \d+ training row\(s\) of camera\(s\) 3"
    ):
        call_refine(workdir, tmp_path, local=[workdir / "local1.csv", workdir / "local2.csv"])


def test_empty_local_label_table_is_an_error(workdir, tmp_path):
    empty = tmp_path / "empty.csv"
    write_table(pd.DataFrame(columns=["index_row", "camid", "local_label"]), empty)
    with pytest.raises(PipelineError, match=r"empty.csv: local-label table is empty"):
        call_refine(workdir, tmp_path, local=[workdir / "local1.csv", empty])


def test_clusters_table_of_another_length_is_an_error(workdir, tmp_path):
    short = tmp_path / "short.csv"
    write_table(read_table(workdir / "clusters.parquet").iloc[:-3], short)
    with pytest.raises(PipelineError, match=r"short.csv: 357 rows but the features have 360"):
        call_refine(workdir, tmp_path, clusters=short)


def test_local_labels_of_a_table_twice_is_an_error(workdir, tmp_path):
    local = [workdir / f"local{c}.csv" for c in (1, 2, 3, 3)]
    with pytest.raises(PipelineError, match=r"has a local label in more than one place"):
        call_refine(workdir, tmp_path, local=local)


def test_collected_local_labels_refine_as_the_per_camera_tables(workdir, tmp_path):
    merged = tmp_path / "local.csv"
    run("collect-local-labels", "--tables", *(workdir / f"local{c}.csv" for c in (1, 2, 3)),
        "--out", merged)  # fmt: skip
    table = read_table(merged)
    assert list(table.columns) == ["index_row", "camid", "local_label"]
    assert len(table) == 360 and table["index_row"].is_unique
    call_refine(workdir, tmp_path / "a", local=[merged])
    call_refine(workdir, tmp_path / "b")
    pd.testing.assert_frame_equal(
        read_table(tmp_path / "a" / "r.csv"), read_table(tmp_path / "b" / "r.csv")
    )


def test_weight_floor_lifts_single_camera_clusters(workdir, tmp_path):
    call_refine(workdir, tmp_path / "a")
    call_refine(workdir, tmp_path / "b", weight_floor=0.25)
    plain, floored = read_table(tmp_path / "a" / "r.csv"), read_table(tmp_path / "b" / "r.csv")
    labelled = plain["label"] >= 0
    expected = np.where(labelled, np.maximum(plain["weight"], 0.25), 0.0)
    np.testing.assert_allclose(floored["weight"], expected)
    assert (plain.loc[labelled, "weight"] < 0.25).any(), "no weight below the floor: no test"
    with pytest.raises(PipelineError, match=r"--weight-floor must lie in \[0, 1\], got 1.5"):
        call_refine(workdir, tmp_path / "c", weight_floor=1.5)


def test_refine_on_saved_neighbours_equals_a_fresh_search(workdir, tmp_path):
    call_refine(workdir, tmp_path / "a", neighbours=workdir / "neighbours.npz")
    call_refine(workdir, tmp_path / "b")
    pd.testing.assert_frame_equal(
        read_table(tmp_path / "a" / "r.csv"), read_table(tmp_path / "b" / "r.csv")
    )
    saved = np.load(workdir / "neighbours.npz")
    assert saved["similarities"].shape == (360, 15) and saved["indices"].shape == (360, 15)


def saved_neighbours(workdir, **changes):
    from dataclasses import replace

    from pipeline.stages.cluster_global import read_neighbours

    saved = read_neighbours(workdir / "neighbours.npz", np.arange(10, 370), "none")
    return replace(saved, **changes)


def test_neighbours_of_other_features_are_an_error(workdir, tmp_path):
    from pipeline.stages.cluster_global import write_neighbours

    stale = tmp_path / "stale.npz"
    write_neighbours(stale, saved_neighbours(workdir, index_row=np.arange(11, 371)))
    with pytest.raises(PipelineError, match=r"stale.npz: the neighbour lists were computed"):
        call_refine(workdir, tmp_path, neighbours=stale)


def test_saved_neighbours_record_the_graph_threshold_and_whether_k_counts_self(workdir, tmp_path):
    saved = saved_neighbours(workdir)
    assert (saved.min_sim, saved.k_counts_self) == (0.5, False)
    assert saved.similarities.shape == (360, 15)
    run("cluster-global", "--features", workdir / "train.h5", "--out", tmp_path / "c.csv",
        "--summary", tmp_path / "c.json", "--k", 9, "--k-counts-self", "--min-sim", 0.6,
        "--out-neighbours", tmp_path / "n.npz")  # fmt: skip
    from pipeline.stages.cluster_global import read_neighbours

    own = read_neighbours(tmp_path / "n.npz", np.arange(10, 370), "none")
    assert (own.min_sim, own.k_counts_self, own.similarities.shape) == (0.6, True, (360, 8))
    run("cluster-global", "--features", workdir / "train.h5", "--out", tmp_path / "d.csv",
        "--summary", tmp_path / "d.json", "--method", "dbscan",
        "--out-neighbours", tmp_path / "d.npz")  # fmt: skip
    assert read_neighbours(tmp_path / "d.npz", np.arange(10, 370), "none").min_sim is None
    with pytest.raises(PipelineError, match=r"d.npz: these neighbour lists come from a clust"):
        call_refine(workdir, tmp_path, neighbours=tmp_path / "d.npz", mode="reference")


def test_reference_mode_scores_on_the_threshold_saved_with_the_neighbours(workdir, tmp_path):
    from pipeline.stages.cluster_global import write_neighbours

    call_refine(workdir, tmp_path / "a", neighbours=workdir / "neighbours.npz", mode="reference")
    assert json.loads((tmp_path / "a" / "r.json").read_text())["n_pivots"] > 0
    unlinked = tmp_path / "unlinked.npz"  # no neighbour reaches the threshold: no score, no pivot
    write_neighbours(unlinked, saved_neighbours(workdir, min_sim=1.5))
    call_refine(workdir, tmp_path / "b", neighbours=unlinked, mode="reference")
    assert json.loads((tmp_path / "b" / "r.json").read_text())["n_pivots"] == 0
    with pytest.raises(PipelineError, match=r"--mode reference scores the pivots on the global"):
        call_refine(workdir, tmp_path / "c", mode="reference")


def test_collect_local_labels_names_the_bad_table(workdir, tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    write_table(pd.DataFrame(columns=["index_row", "camid", "local_label"]), empty)
    with pytest.raises(SystemExit):
        run(
            "collect-local-labels",
            "--tables",
            workdir / "local1.csv",
            empty,
            "--out",
            tmp_path / "o.csv",
        )
    assert "empty.csv: local-label table is empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run("collect-local-labels", "--tables", workdir / "local1.csv", workdir / "local1.csv",
            "--out", tmp_path / "o.csv")  # fmt: skip
    assert "has a local label in more than one place" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_messages_of_intra_errors(tmp_path, capsys):
    features, camids, pids = planted_features(40, dim=16, n_cams=2, seed=0)
    camids[:6] = 2
    camids[6:] = 1
    save_features(tmp_path / "f.h5", features, camids, pids)
    features[12] *= 2
    save_features(tmp_path / "unnormalised.h5", features, camids, pids)
    for name, camera, message in [
        ("f.h5", 2, r"camera 2: 6 image\(s\), fewer than 2 x ratio = 10"),
        ("f.h5", 5, r"no image of camera 5 \(--camera\); cameras present: 1, 2"),
        ("unnormalised.h5", 1, r"1 feature row\(s\) are not L2-normalised.*first rows 12"),
    ]:
        with pytest.raises(SystemExit):
            run(
                "cluster-intra",
                "--features",
                tmp_path / name,
                "--camera",
                camera,
                "--out",
                tmp_path / "l.csv",
            )
        assert re.search(message, capsys.readouterr().err)
        assert not (tmp_path / "l.csv").exists()


def test_non_finite_features_stop_the_global_stage(tmp_path, capsys):
    features, camids, pids = planted_features(40, dim=16, n_cams=2, seed=0)
    features[[4, 30]] = np.nan
    save_features(tmp_path / "f.h5", features, camids, pids)
    with pytest.raises(SystemExit):
        run(
            "cluster-global",
            "--features",
            tmp_path / "f.h5",
            "--out",
            tmp_path / "c.csv",
            "--summary",
            tmp_path / "c.json",
        )
    assert "2 feature row(s) contain NaN or infinity, first rows 4, 30" in capsys.readouterr().err
    assert not (tmp_path / "c.csv").exists()
