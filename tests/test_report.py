"""The report stage and the plot and table functions behind it (compare: test_uncertainty.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from threadpoolctl import threadpool_limits

from pipeline.errors import PipelineError
from pipeline.features.store import FeatureSet, write_features
from pipeline.report.curves import MONITORING_NOTE, concat_train_logs, plot_curves, retrieval_curve
from pipeline.report.embedding import camera_bias, sample_rows, tsne_2d
from pipeline.report.provenance import software_versions
from pipeline.report.refinement import cluster_quality_table, plot_cluster_quality, round_table
from pipeline.report.retrieval import choose_queries, queries_with_match, rank_gallery
from pipeline.report.summary import FRACTION, trend
from pipeline.report.tables import display_table, final_metrics, markdown_table
from pipeline.stages import report
from pipeline.train.inter import summary_fields


@pytest.fixture(autouse=True)
def one_thread():
    """t-SNE's OpenMP threads spin against each other on a busy CI machine; one is fastest
    for the few points these tests embed."""
    with threadpool_limits(1):
        yield


# ---------------------------------------------------------------------------------------------
# hand-made inputs


def feature_set(features, pid, camid) -> FeatureSet:
    n = len(pid)
    return FeatureSet(
        features=np.asarray(features, dtype=np.float32),
        index_row=np.arange(n, dtype=np.int64),
        camid=np.asarray(camid, dtype=np.int64),
        pid=np.asarray(pid, dtype=np.int64),
        path=np.array([f"img{i}.jpg" for i in range(n)], dtype=object),
    )


def metrics_row(**values) -> dict:
    row = {
        "experiment": "calr",
        "dataset": "market1501",
        "epoch": 10,
        "mAP": 0.5,
        "rank1": 0.7,
        "rank5": 0.8,
        "rank10": 0.9,
        "mINP": 0.2,
        "num_query": 6,
        "num_valid_query": 6,
        "reranking": False,
    }
    return {**row, **values}


def summary(round_number: int, quality: bool = True) -> dict:
    data = {
        "n_clusters": 10 + round_number,
        "n_outliers": 8 - round_number,
        "n_pivots": 5,
        "discard_probability": 1.0 / round_number,
        "n_discarded": 6 // round_number,
        "discard_ratio": 0.5 / round_number,
    }
    if quality:
        data["quality"] = {
            kind: {
                "precision": p,
                "recall": 0.5,
                "fscore": 2 * p * 0.5 / (p + 0.5),
                "expansion": e,
                "n_clusters": 9,
            }
            for kind, p, e in (("global", 0.4, 3.0), ("refined", 0.6, 2.0), ("local", 0.9, 1.5))
        }
    return data


def make_report_inputs(root: Path, quality: bool = True) -> dict:
    """A 6-camera dataset of 24 train, 6 query and 12 gallery images with features whose
    camera bias drops from before to after training; 2 rounds of 3 epochs."""
    rng = np.random.default_rng(0)
    rows = []
    for split, n in (("train", 24), ("query", 6), ("gallery", 12)):
        for i in range(n):
            pid = i % 6 if split != "train" else i % 12
            camid = 1 + (i % 6 if split == "query" else (i + 1 + i // 6) % 6)
            path = root / "images" / f"{split}_{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 32), (40 * pid % 256, 20 * camid, 90)).save(path)
            rows.append({"path": str(path), "camid": camid, "pid": pid, "split": split})
    index = pd.DataFrame(rows)
    index.to_csv(root / "index.csv", index=False)
    identity, camera = rng.normal(size=(12, 16)), rng.normal(size=(7, 16))
    attrs = {"model": "none", "arch": "resnet18", "height": 32, "width": 16, "flip": False}

    def write(name: str, split: str, camera_weight: float) -> Path:
        rows = index[index["split"] == split]
        x = identity[rows["pid"]] + camera_weight * camera[rows["camid"]]
        x += 0.1 * rng.normal(size=x.shape)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        path = root / f"{name}.h5"
        write_features(path, FeatureSet.from_index(x, rows, {**attrs, "split": split}))
        return path

    files = {
        "features_before": write("before", "train", 3.0),
        "features_after": write("after", "train", 0.1),
        "query": write("query", "query", 0.1),
        "gallery": write("gallery", "gallery", 0.1),
    }
    logs, summaries = [], []
    for r in (1, 2):
        folder = root / f"round{r}"
        folder.mkdir()
        epochs = range(3 * r - 2, 3 * r + 1)
        pd.DataFrame(
            {
                "epoch": list(epochs),
                "lr": 3.5e-4,
                "loss_contrastive": [5.0 - e / 2 for e in epochs],
                "loss_camera": 1.7,
                "loss_total": [6.7 - e / 2 for e in epochs],
                "n_clusters": 10 + r,
                "n_outliers": 8 - r,
                "n_train_samples": 24,
                "seconds": 1.0,
                # as train-inter writes them: the refinement summary's scalars, prefixed
                **summary_fields(summary(r, quality)),
            }
        ).to_csv(folder / "train_log.csv", index=False)
        (folder / "refine.json").write_text(json.dumps(summary(r, quality)))
        logs.append(folder / "train_log.csv")
        summaries.append(folder / "refine.json")
    pd.DataFrame([metrics_row(epoch=3, mAP=0.3), metrics_row(epoch=6, mAP=0.52)]).to_csv(
        root / "metrics.csv", index=False
    )
    return {
        "index": root / "index.csv",
        "train_logs": logs,
        "refine_summaries": summaries,
        "metrics": root / "metrics.csv",
        **files,
    }


def report_args(inputs: dict, out_dir: Path, **overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    argv = [
        "--experiment",
        "calr",
        "--index",
        str(inputs["index"]),
        "--train-logs",
        *map(str, inputs["train_logs"]),
        "--refine-summaries",
        *map(str, inputs["refine_summaries"]),
        "--features-before",
        str(inputs["features_before"]),
        "--features-after",
        str(inputs["features_after"]),
        "--query",
        str(inputs["query"]),
        "--gallery",
        str(inputs["gallery"]),
        "--metrics",
        str(inputs["metrics"]),
        "--out-dir",
        str(out_dir),
        "--tsne-points",
        "20",
        "--retrieval-queries",
        "3",
    ]
    args = parser.parse_args(argv)
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def figure_texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


# ---------------------------------------------------------------------------------------------
# training logs and refinement summaries


def test_concat_train_logs_keeps_rounds_and_epochs_in_order():
    first = pd.DataFrame({"epoch": [2, 1], "loss_total": [4.0, 5.0]})
    second = pd.DataFrame({"epoch": [3, 4], "n_pivots": [7, 8]})
    table = concat_train_logs([first, second], ["a.csv", "b.csv"])
    assert table.columns[:2].tolist() == ["round", "epoch"]
    assert table["epoch"].tolist() == [1, 2, 3, 4]
    assert table["round"].tolist() == [1, 1, 2, 2]
    assert table["loss_total"].tolist()[:2] == [5.0, 4.0]
    assert table["n_pivots"].isna().tolist() == [True, True, False, False]


def test_concat_train_logs_rejects_rounds_out_of_order():
    with pytest.raises(PipelineError, match=r"b.csv: round 2 starts at epoch 2 .*a.csv.* 3"):
        concat_train_logs(
            [pd.DataFrame({"epoch": [1, 2, 3]}), pd.DataFrame({"epoch": [2]})], ["a.csv", "b.csv"]
        )


def test_concat_train_logs_rejects_repeated_epoch():
    with pytest.raises(PipelineError, match=r"a.csv: epoch 2 appears more than once"):
        concat_train_logs([pd.DataFrame({"epoch": [1, 2, 2]})], ["a.csv"])


def test_round_and_quality_tables_tolerate_missing_keys():
    summaries = [summary(1), {"n_clusters": 4}]
    rounds = round_table(summaries)
    assert rounds["round"].tolist() == [1, 2]
    assert rounds["n_clusters"].tolist() == [11, 4]
    assert np.isnan(rounds.loc[1, "discard_ratio"])
    quality = cluster_quality_table(summaries)
    assert quality["clusters"].tolist() == ["global", "refined", "local"]
    assert quality["round"].tolist() == [1, 1, 1]
    assert quality["precision"].tolist() == [0.4, 0.6, 0.9]
    assert quality["expansion"].tolist() == [3.0, 2.0, 1.5]


def test_panels_without_data_say_not_available():
    epochs = concat_train_logs([pd.DataFrame({"epoch": [1, 2]})], ["log.csv"])
    texts = figure_texts(plot_curves(epochs, None, "t"))
    assert len(texts) == 4 and all("not available" in t for t in texts)
    empty = cluster_quality_table([{"n_clusters": 3}])
    texts = figure_texts(plot_cluster_quality(empty, "t"))
    assert len(texts) == 4 and all("not available" in t for t in texts)


def test_curves_plot_the_present_columns_only():
    epochs = concat_train_logs(
        [pd.DataFrame({"epoch": [1, 2], "loss_total": [2.0, 1.0], "n_clusters": [5, 6]})], ["l"]
    )
    metrics = pd.DataFrame([metrics_row(epoch=2), metrics_row(epoch=2, reranking=True)])
    fig = plot_curves(epochs, metrics, "t")
    loss, clusters, refine, retrieval = fig.axes[:4]
    assert [line.get_label() for line in loss.lines] == ["total (weighted sum, Eq. 9)"]
    assert [line.get_label() for line in clusters.lines] == ["global clusters"]
    assert "not available" in refine.texts[0].get_text()
    assert [line.get_label() for line in retrieval.lines] == [
        "mAP",
        "rank-1",
        "mAP (re-ranked)",
        "rank-1 (re-ranked)",
    ]
    assert retrieval.lines[0].get_ydata().tolist() == [50.0]


def test_retrieval_curve_puts_every_round_in_epoch_order_with_the_delivered_model_last():
    """Rounds of 4 epochs: the models after epochs 4 and 8 (evaluate.every_round, given in any
    order) and the delivered one after epoch 12, evaluated with and without re-ranking."""
    rounds = [
        pd.DataFrame([metrics_row(epoch=8, mAP=0.3, rank1=0.4)]),
        pd.DataFrame([metrics_row(epoch=4, mAP=0.2, rank1=0.3)]).drop(columns="reranking"),
    ]
    final = pd.DataFrame([metrics_row(epoch=12, reranking=True, mAP=0.6), metrics_row(epoch=12)])
    curve = retrieval_curve([*rounds, final], ["r1.csv", "r0.csv", "final.csv"])
    assert curve["epoch"].tolist() == [4, 8, 12, 12]
    assert curve["mAP"].tolist() == [0.2, 0.3, 0.5, 0.6]
    assert curve["reranking"].tolist() == [False, False, False, True]
    assert curve["delivered"].tolist() == [False, False, True, True]
    retrieval = plot_curves(pd.DataFrame({"epoch": [1]}), curve, "t").axes[3]
    assert MONITORING_NOTE in retrieval.get_title()
    assert retrieval.lines[0].get_xdata().tolist() == [4, 8, 12]
    assert retrieval.lines[1].get_ydata().tolist() == [30.0, 40.0, 70.0]  # rank-1, %
    # the delivered model alone: one point, nothing to monitor
    alone = plot_curves(pd.DataFrame({"epoch": [1]}), retrieval_curve([final], ["f"]), "t")
    assert alone.axes[3].get_title() == "Retrieval on query/gallery"


def test_retrieval_curve_rejects_rounds_after_the_delivered_model_and_repeats():
    final = pd.DataFrame([metrics_row(epoch=8)])
    late = pd.DataFrame([metrics_row(epoch=8)])
    with pytest.raises(PipelineError, match=r"r1.csv: epoch 8 is not before .* epoch 8 \(f.csv\)"):
        retrieval_curve([late, final], ["r1.csv", "f.csv"])
    twice = pd.DataFrame([metrics_row(epoch=4)])
    with pytest.raises(PipelineError, match=r"r1.csv: epoch 4 is evaluated more than once"):
        retrieval_curve([twice, twice, final], ["r0.csv", "r1.csv", "f.csv"])


# ---------------------------------------------------------------------------------------------
# camera bias and t-SNE


def test_camera_bias_on_a_hand_built_case():
    # rows: pid 0 cam 1, pid 1 cam 1, pid 2 cam 2, pid 0 cam 2, pid -1 cam 1
    features = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.0, -1.0], [1.0, 0.0]])
    bias = camera_bias(features, np.array([1, 1, 2, 2, 1]), np.array([0, 1, 2, 0, -1]))
    # different identities, same camera: (0,1) 0.6, (2,3) -1
    assert bias.same_camera_pairs == 2
    assert bias.same_camera == pytest.approx((0.6 - 1.0) / 2)
    # different identities, different cameras: (0,2) 0, (1,2) 0.8, (1,3) -0.8; (0,3) is pid 0
    assert bias.cross_camera_pairs == 3
    assert bias.cross_camera == pytest.approx(0.0)
    assert bias.gap == pytest.approx(-0.2)


def test_camera_bias_normalises_and_is_nan_without_pairs():
    bias = camera_bias(np.array([[2.0, 0.0], [3.0, 3.0]]), np.array([1, 1]), np.array([0, 1]))
    assert bias.same_camera == pytest.approx(np.sqrt(0.5))
    assert np.isnan(bias.cross_camera) and bias.cross_camera_pairs == 0


def test_sample_rows_is_seeded_sorted_and_bounded():
    rows = sample_rows(100, 10, seed=3)
    assert rows.tolist() == sorted(set(rows.tolist())) and len(rows) == 10
    assert rows.tolist() == sample_rows(100, 10, seed=3).tolist()
    assert rows.tolist() != sample_rows(100, 10, seed=4).tolist()
    assert sample_rows(5, 10, seed=0).tolist() == [0, 1, 2, 3, 4]


def test_tsne_is_deterministic_for_a_seed():
    x = np.random.default_rng(0).normal(size=(20, 60)).astype(np.float32)
    xy = tsne_2d(x, seed=1)
    assert xy.shape == (20, 2) and np.isfinite(xy).all()
    np.testing.assert_array_equal(xy, tsne_2d(x, seed=1))


# ---------------------------------------------------------------------------------------------
# retrieval


def test_rank_gallery_excludes_same_camera_matches_and_junk():
    angles = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    gallery = feature_set(
        np.stack([np.cos(angles), np.sin(angles)], axis=1),
        pid=[7, -1, 3, 7, 7, 3],
        camid=[1, 2, 1, 2, 1, 1],
    )
    query = feature_set([[1.0, 0.0]], pid=[7], camid=[1])
    ranking = rank_gallery(query, gallery, top_k=4)
    # rows 0 and 4: pid 7 from the query's camera 1; row 1: junk
    assert ranking.gallery_rows.tolist() == [[2, 3, 5, -1]]
    assert ranking.correct.tolist() == [[False, True, False, False]]
    np.testing.assert_allclose(ranking.similarity[0, :3], np.cos([0.2, 0.3, 0.5]), rtol=1e-6)
    assert np.isnan(ranking.similarity[0, 3])


def test_rank_gallery_breaks_ties_in_gallery_order():
    gallery = feature_set([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], pid=[1, 2, 1], camid=[2, 2, 2])
    query = feature_set([[1.0, 0.0], [0.0, 1.0]], pid=[1, 1], camid=[1, 2])
    ranking = rank_gallery(query, gallery, top_k=3)
    assert ranking.gallery_rows.tolist() == [[1, 2, 0], [1, -1, -1]]
    assert ranking.correct.tolist() == [[False, True, True], [False, False, False]]


def test_queries_with_match_need_the_identity_in_another_camera():
    gallery = feature_set(np.ones((4, 2)), pid=[1, 1, 2, -1], camid=[1, 2, 1, 3])
    query = feature_set(np.ones((5, 2)), pid=[1, 1, 2, 4, -1], camid=[1, 3, 1, 1, 2])
    assert queries_with_match(query, gallery).tolist() == [True, True, False, False, False]
    chosen = choose_queries(query, gallery, count=5, seed=0)
    assert chosen.tolist() == [0, 1]
    nobody = feature_set(np.ones((3, 2)), pid=[9, 9, 9], camid=[1, 1, 1])
    assert choose_queries(nobody, gallery, count=2, seed=0).tolist() in ([0, 1], [0, 2], [1, 2])


# ---------------------------------------------------------------------------------------------
# tables


def test_final_metrics_takes_the_last_epoch_per_reranking_setting():
    metrics = pd.DataFrame(
        [
            metrics_row(epoch=5, mAP=0.1),
            metrics_row(epoch=10, mAP=0.6, reranking=True),
            metrics_row(epoch=10, mAP=0.5),
        ]
    )
    final = final_metrics(metrics, "m.csv")
    assert final["epoch"].tolist() == [10, 10]
    assert final["reranking"].tolist() == [False, True]
    assert final["mAP"].tolist() == [0.5, 0.6]
    no_column = final_metrics(metrics.drop(columns="reranking").iloc[:1], "m.csv")
    assert no_column["reranking"].tolist() == [False]


def test_final_metrics_rejects_repeated_and_empty_tables():
    twice = pd.DataFrame([metrics_row(), metrics_row(mAP=0.1)])
    with pytest.raises(PipelineError, match=r"m.csv: epoch 10 is evaluated more than once"):
        final_metrics(twice, "m.csv")
    with pytest.raises(PipelineError, match=r"m.csv: no evaluated model"):
        final_metrics(twice.iloc[:0], "m.csv")


def test_metrics_for_people_and_as_markdown():
    table = pd.concat(
        [
            final_metrics(pd.DataFrame([metrics_row(epoch=50, mAP=0.8451, rank1=0.936)]), "a"),
            final_metrics(
                pd.DataFrame([metrics_row(experiment="baseline", epoch=50, mAP=0.83, mINP=np.nan)]),
                "b",
            ),
        ]
    )[["experiment", "dataset", "epoch", "reranking", "mAP", "rank1", "rank5", "rank10", "mINP"]]
    assert markdown_table(display_table(table)) == (
        "| Experiment | Dataset | Epoch | Re-ranking | mAP | Rank-1 | Rank-5 | Rank-10 | mINP |\n"
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |\n"
        "| calr | market1501 | 50 | no | 84.5 | 93.6 | 80.0 | 90.0 | 20.0 |\n"
        "| baseline | market1501 | 50 | no | 83.0 | 70.0 | 80.0 | 90.0 | n/a |\n"
    )


def test_markdown_table_escapes_pipes():
    text = markdown_table(pd.DataFrame({"a": ["x|y"]}))
    assert text.splitlines()[2] == "| x\\|y |"


def test_trend_text():
    assert trend(0.55, 0.1834, FRACTION) == "0.550 -> 0.183 (falling)"
    assert trend(1, 1, "{:,.0f}") == "1 -> 1 (flat)"
    assert trend(np.nan, 2, FRACTION) == "not available"


def test_software_versions_name_every_package():
    versions = software_versions()
    for name in ("python", "pipeline", "git commit", "torch", "faiss", "infomap", "snakemake"):
        assert versions[name]
    assert versions["numpy"] == np.__version__


# ---------------------------------------------------------------------------------------------
# the report stage end to end

REPORT_FILES = (
    "curves.png",
    "cluster_quality.png",
    "cluster_quality.csv",
    "tsne_cameras.png",
    "retrieval.png",
    "epochs.csv",
    "summary.md",
)


@pytest.fixture(scope="module")
def report_inputs(tmp_path_factory) -> dict:
    return make_report_inputs(tmp_path_factory.mktemp("report-inputs"))


def test_report_writes_every_output(report_inputs, tmp_path):
    report.run(report_args(report_inputs, tmp_path / "out"))
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)
    for name in REPORT_FILES:
        if name.endswith(".png"):
            with Image.open(out / name) as image:
                assert image.size[0] > 500 and image.size[1] > 300
    epochs = pd.read_csv(out / "epochs.csv")
    assert epochs["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    assert epochs["round"].tolist() == [1, 1, 1, 2, 2, 2]
    quality = pd.read_csv(out / "cluster_quality.csv")
    assert quality[["round", "clusters"]].values.tolist() == [
        [r, kind] for r in (1, 2) for kind in ("global", "refined", "local")
    ]
    text = (out / "summary.md").read_text()
    assert "| 6 | no | 52.0 | 70.0 | 80.0 | 90.0 | 20.0 |" in text
    assert "- global clusters: 11 -> 12 (rising)" in text
    assert "- discard ratio: 0.500 -> 0.250 (falling)" in text
    assert "- pairwise F-score in the last round: global 0.444, refined 0.545, local 0.643" in text
    # the features were built with a strong camera term before training and a weak one after
    gap = text.split("Gap: ")[1]
    assert gap.endswith("(falling).\n")


def test_report_without_refinement_or_optional_columns(report_inputs, tmp_path):
    log = tmp_path / "train_log.csv"
    pd.DataFrame({"epoch": [1, 2]}).to_csv(log, index=False)
    metrics = tmp_path / "metrics.csv"
    pd.DataFrame(columns=list(metrics_row())).to_csv(metrics, index=False)
    args = report_args(
        report_inputs,
        tmp_path / "out",
        train_logs=[log],
        refine_summaries=[],
        metrics=metrics,
        seed=5,
    )
    report.run(args)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(REPORT_FILES)
    assert pd.read_csv(tmp_path / "out" / "cluster_quality.csv").empty
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "- cluster quality: not available (identities unknown)" in text
    assert "- discard ratio: not available" in text
    assert "No evaluated model." in text
    assert "- rounds: 1 (epochs 1-2)" in text


def test_report_input_errors(report_inputs, tmp_path):
    out = tmp_path / "out"
    missing = tmp_path / "refine.json"
    with pytest.raises(PipelineError, match=r"refine.json: refine summary not found"):
        report.run(report_args(report_inputs, out, refine_summaries=[missing]))
    missing.write_text("{not json")
    with pytest.raises(PipelineError, match=r"refine.json: not valid JSON"):
        report.run(report_args(report_inputs, out, refine_summaries=[missing]))
    missing.write_text("[1, 2]")
    with pytest.raises(PipelineError, match=r"refine.json: a refine summary is a JSON object"):
        report.run(report_args(report_inputs, out, refine_summaries=[missing]))
    with pytest.raises(PipelineError, match=r"no row for experiment 'other' \(found calr\)"):
        report.run(report_args(report_inputs, out, experiment="other"))
    other = tmp_path / "other.metrics.csv"
    pd.DataFrame([metrics_row(experiment="other", epoch=3)]).to_csv(other, index=False)
    with pytest.raises(PipelineError, match=r"other.metrics.csv: no row for .*--round-metrics"):
        report.run(report_args(report_inputs, out, round_metrics=[other]))
    late = tmp_path / "late.metrics.csv"
    pd.DataFrame([metrics_row(epoch=7)]).to_csv(late, index=False)
    with pytest.raises(PipelineError, match=r"late.metrics.csv: epoch 7 is not before"):
        report.run(report_args(report_inputs, out, round_metrics=[late]))
    with pytest.raises(PipelineError, match=r"hold different images"):
        report.run(report_args(report_inputs, out, features_after=report_inputs["query"]))
    with pytest.raises(PipelineError, match=r"--tsne-points must be 10 or more, got 3"):
        report.run(report_args(report_inputs, out, tsne_points=3))
    with pytest.raises(PipelineError, match=r"--retrieval-queries must be 1 or more, got 0"):
        report.run(report_args(report_inputs, out, retrieval_queries=0))
    assert not out.exists()


def test_load_thumbnail_resizes_and_names_an_unreadable_image(tmp_path):
    Image.new("RGB", (30, 70), (200, 10, 10)).save(tmp_path / "person.png")
    thumbnail = report.load_thumbnail(str(tmp_path / "person.png"))
    assert thumbnail.shape == (128, 64, 3) and thumbnail.dtype == np.uint8
    assert thumbnail[60, 30].tolist() == [200, 10, 10]
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(PipelineError, match=r"broken.jpg: cannot read the image"):
        report.load_thumbnail(str(tmp_path / "broken.jpg"))


def test_curves_read_the_refinement_columns_of_a_stage2_log():
    """train-inter logs the refinement summary with a ``refine_`` prefix: the curves read those."""
    log = pd.DataFrame({"epoch": [1], "n_clusters": [5], **summary_fields(summary(1))})
    fig = plot_curves(concat_train_logs([log], ["l"]), None, "t")
    _, clusters, refine, _ = fig.axes[:4]
    assert [line.get_label() for line in refine.lines] == ["discard ratio", "discard probability p"]
    assert "pivots" in [line.get_label() for line in clusters.lines]
