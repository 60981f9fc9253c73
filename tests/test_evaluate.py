"""Retrieval metrics against a plain loop-over-queries reference, and the `evaluate` stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.cli import build_parser
from pipeline.errors import PipelineError
from pipeline.evaluate.metrics import RetrievalMetrics, evaluate_retrieval
from pipeline.evaluate.rerank import k_reciprocal_distance_blocks
from pipeline.features.store import FeatureSet, write_features
from pipeline.runtime import Device
from pipeline.stages.evaluate import retrieval_device

METRICS_COLUMNS = [
    "experiment",
    "dataset",
    "epoch",
    "seed",
    "mAP",
    "rank1",
    "rank5",
    "rank10",
    "mINP",
    "num_query",
    "num_valid_query",
    "reranking",
]


def reference_scores(distance, query_pids, query_camids, gallery_pids, gallery_camids):
    """Market-1501 protocol, one query at a time: per query (AP, first match rank, INP),
    (NaN, 0, NaN) for a query without a true match."""
    scores = []
    for q in range(len(query_pids)):
        ranked = sorted(range(len(gallery_pids)), key=lambda g: (distance[q, g], g))
        kept = [
            g
            for g in ranked
            if gallery_pids[g] != -1
            and not (gallery_pids[g] == query_pids[q] and gallery_camids[g] == query_camids[q])
        ]
        match_ranks = [r + 1 for r, g in enumerate(kept) if gallery_pids[g] == query_pids[q]]
        if not match_ranks:
            scores.append((np.nan, 0, np.nan))
            continue
        ap = np.mean([(n + 1) / r for n, r in enumerate(match_ranks)])
        scores.append((ap, match_ranks[0], len(match_ranks) / match_ranks[-1]))
    return [np.array(column) for column in zip(*scores, strict=True)]


def assert_matches_reference(metrics, distance, qp, qc, gp, gc, max_rank):
    ap, first_rank, inp = reference_scores(distance, qp, qc, gp, gc)
    valid = first_rank > 0
    assert metrics.num_query == len(qp)
    assert metrics.num_valid_query == valid.sum()
    np.testing.assert_allclose(metrics.mAP, ap[valid].mean(), rtol=1e-12)
    cmc = [np.mean(first_rank[valid] <= k) for k in range(1, max_rank + 1)]
    np.testing.assert_allclose(metrics.cmc, cmc, rtol=1e-12)
    np.testing.assert_allclose(metrics.mINP, inp[valid].mean(), rtol=1e-12)
    per_query = metrics.per_query
    np.testing.assert_array_equal(per_query.pid, qp)
    np.testing.assert_array_equal(per_query.first_rank, first_rank)
    np.testing.assert_allclose(per_query.ap, ap, rtol=1e-12)  # NaN where NaN
    np.testing.assert_allclose(per_query.inp, inp, rtol=1e-12)


def tied_features(rng, n, dim=6):
    """Rows of +-0.5 and 0: dot products are exact in float32, and many distances tie."""
    return (rng.integers(-1, 2, size=(n, dim)) * 0.5).astype(np.float32)


def random_case(seed, num_query=17, num_gallery=40, ids=6, cameras=3):
    rng = np.random.default_rng(seed)
    qp = rng.integers(0, ids, num_query)
    qp[-1] = ids  # an identity absent from the gallery: this query must be skipped
    gp = rng.integers(-1, ids, num_gallery)  # -1: junk
    qc = rng.integers(0, cameras, num_query)
    gc = rng.integers(0, cameras, num_gallery)
    return tied_features(rng, num_query), qp, qc, tied_features(rng, num_gallery), gp, gc


# None: NumPy on the CPU; "cpu": the PyTorch path that runs on a GPU, here on the CPU
DEVICES = [None, "cpu"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("chunk_size", [1, 5, None])
def test_features_match_brute_force_reference(seed, chunk_size, device):
    qf, qp, qc, gf, gp, gc = random_case(seed)
    distance = 2 - 2 * (qf @ gf.T)
    metrics = evaluate_retrieval(
        qf, qp, qc, gf, gp, gc, max_rank=12, chunk_size=chunk_size, device=device
    )
    assert_matches_reference(metrics, distance, qp, qc, gp, gc, 12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(3))
def test_precomputed_distance_blocks_match_reference(seed, device):
    qf, qp, qc, gf, gp, gc = random_case(seed, num_query=23, num_gallery=31)
    distance = np.random.default_rng(seed).integers(0, 5, size=(23, 31)).astype(np.float32)
    blocks = (distance[s : s + 4] for s in range(0, 23, 4))
    metrics = evaluate_retrieval(None, qp, qc, None, gp, gc, distance=blocks, device=device)
    assert_matches_reference(metrics, distance, qp, qc, gp, gc, 10)
    whole = evaluate_retrieval(
        None, qp, qc, None, gp, gc, distance=distance, chunk_size=7, device=device
    )
    assert_matches_reference(whole, distance, qp, qc, gp, gc, 10)
    np.testing.assert_array_equal(distance, distance.astype(np.int64))  # the input is untouched


@pytest.mark.parametrize("device", DEVICES)
def test_ties_everywhere_rank_by_gallery_column(device):
    # three distance values, -0.0 equal to 0.0: almost every true match shares its distance
    # with other kept, junk and same-camera images, in earlier and later columns
    rng = np.random.default_rng(7)
    _, qp, qc, _, gp, gc = random_case(7, num_query=30, num_gallery=60, ids=4, cameras=2)
    distance = rng.choice(np.array([-0.0, 0.0, 1.0, 2.0], dtype=np.float32), size=(30, 60))
    metrics = evaluate_retrieval(None, qp, qc, None, gp, gc, distance=distance, device=device)
    assert_matches_reference(metrics, distance, qp, qc, gp, gc, 10)
    assert metrics.num_valid_query >= 25


def test_per_query_scores_resample_to_the_metrics_of_those_queries():
    qf, qp, qc, gf, gp, gc = random_case(3, num_query=30)
    metrics = evaluate_retrieval(qf, qp, qc, gf, gp, gc)
    scores = metrics.per_query
    assert not scores.valid[-1] and scores.first_rank[-1] == 0 and np.isnan(scores.ap[-1])
    picked = np.array([4, 4, 0, 29, 11, 4])  # with repeats and the query without a match
    resampled = RetrievalMetrics.from_query_scores(scores.take(picked))
    direct = evaluate_retrieval(qf[picked], qp[picked], qc[picked], gf, gp, gc)
    assert (resampled.num_query, resampled.num_valid_query) == (6, 5)
    assert resampled.mAP == pytest.approx(direct.mAP, rel=1e-12)
    assert resampled.mINP == pytest.approx(direct.mINP, rel=1e-12)
    np.testing.assert_allclose(resampled.cmc, direct.cmc, rtol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_ranking_matches_the_cpu():
    qf, qp, qc, gf, gp, gc = random_case(1, num_query=50, num_gallery=300)
    exact = evaluate_retrieval(qf, qp, qc, gf, gp, gc, device="cuda", chunk_size=16)
    assert_matches_reference(exact, 2 - 2 * (qf @ gf.T), qp, qc, gp, gc, 10)
    # multiples of 1/64: every product is exact in float32 whatever the order of the sums, so
    # both devices see the same distances, and the ranking alone is compared
    rng = np.random.default_rng(0)
    query, gallery = (np.round(64 * unit_rows(rng, n, 64)) / 64 for n in (200, 3000))
    qp, gp = rng.integers(0, 40, 200), rng.integers(-1, 40, 3000)
    qc, gc = rng.integers(0, 4, 200), rng.integers(0, 4, 3000)
    on_cpu = evaluate_retrieval(query, qp, qc, gallery, gp, gc)
    on_gpu = evaluate_retrieval(query, qp, qc, gallery, gp, gc, device="cuda", chunk_size=37)
    np.testing.assert_array_equal(on_gpu.per_query.first_rank, on_cpu.per_query.first_rank)
    np.testing.assert_allclose(on_gpu.per_query.ap, on_cpu.per_query.ap, rtol=1e-12)
    np.testing.assert_allclose(on_gpu.per_query.inp, on_cpu.per_query.inp, rtol=1e-12)
    assert abs(on_gpu.mAP - on_cpu.mAP) < 1e-6 and abs(on_gpu.mINP - on_cpu.mINP) < 1e-6


# One query (pid 1, camera 1) against a hand-built gallery, in distance order:
#   g0 pid 1 cam 1  0.0  same identity, same camera: ignored
#   g1 pid -1 cam 2 0.1  junk: ignored
#   g2 pid 2 cam 2  0.2  -> rank 1
#   g3 pid 1 cam 2  0.3  -> rank 2, true match
#   g4 pid 3 cam 3  0.4  -> rank 3
#   g5 pid 1 cam 3  0.5  -> rank 4, true match
HAND_GALLERY_PIDS = [1, -1, 2, 1, 3, 1]
HAND_GALLERY_CAMIDS = [1, 2, 2, 2, 3, 3]
HAND_DISTANCE = [[0.0, 0.1, 0.2, 0.3, 0.4, 0.5]]


def test_same_camera_and_junk_gallery_images_are_ignored():
    m = evaluate_retrieval(
        None, [1], [1], None, HAND_GALLERY_PIDS, HAND_GALLERY_CAMIDS,
        distance=np.array(HAND_DISTANCE),
    )  # fmt: skip
    assert m.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert m.mINP == pytest.approx(2 / 4)
    np.testing.assert_array_equal(m.cmc, [0, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    assert (m.num_query, m.num_valid_query) == (1, 1)


def test_query_without_valid_match_is_skipped_and_counted():
    # second query: pid 4 appears in the gallery only under the query's own camera
    gallery_pids = [*HAND_GALLERY_PIDS, 4]
    gallery_camids = [*HAND_GALLERY_CAMIDS, 5]
    distance = np.array([[*HAND_DISTANCE[0], 0.9], [0.5, 0.4, 0.3, 0.2, 0.1, 0.0, 0.05]])
    m = evaluate_retrieval(
        None, [1, 4], [1, 5], None, gallery_pids, gallery_camids, distance=distance
    )
    assert (m.num_query, m.num_valid_query) == (2, 1)
    assert m.mAP == pytest.approx(0.5)
    assert m.rank(1) == 0 and m.rank(2) == 1


def test_no_valid_query_gives_nan():
    m = evaluate_retrieval(None, [7], [1], None, [7, -1], [1, 2], distance=np.zeros((1, 2)))
    assert (m.num_query, m.num_valid_query) == (1, 0)
    assert np.isnan(m.mAP) and np.isnan(m.mINP) and np.isnan(m.cmc).all()


def test_ties_keep_gallery_order():
    # all distances equal: the ranking is the gallery order
    distance = np.full((1, 3), 0.5)
    later = evaluate_retrieval(None, [1], [1], None, [2, 1, 1], [2, 2, 3], distance=distance)
    assert later.mAP == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert later.mINP == pytest.approx(2 / 3)
    assert later.rank(1) == 0 and later.rank(2) == 1
    first = evaluate_retrieval(None, [1], [1], None, [1, 1, 2], [2, 3, 2], distance=distance)
    assert first.mAP == 1 and first.mINP == 1 and first.rank(1) == 1


def test_minp_by_hand():
    # true matches at ranks 1 and 5: AP = (1/1 + 2/5) / 2, INP = 2 / 5
    distance = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    m = evaluate_retrieval(None, [1], [0], None, [1, 2, 3, 4, 1], [1] * 5, distance=distance)
    assert m.mAP == pytest.approx(0.7)
    assert m.mINP == pytest.approx(0.4)
    # two queries average: the second finds its only match at rank 2 (AP 1/2, INP 1/2)
    two = evaluate_retrieval(
        None, [1, 2], [0, 0], None, [1, 2, 3, 4, 1], [1] * 5,
        distance=np.vstack([distance, [[0.1, 0.05, 0.0, 0.3, 0.4]]]),
    )  # fmt: skip
    assert two.mINP == pytest.approx((0.4 + 0.5) / 2)
    assert two.mAP == pytest.approx((0.7 + 0.5) / 2)
    np.testing.assert_allclose(two.cmc[:3], [0.5, 1, 1])


def test_distance_must_be_finite():
    distance = np.array([[0.1, np.nan, 0.2, 0.3, 0.4, 0.5]])
    with pytest.raises(ValueError, match="query row 0 holds NaN or infinite values"):
        evaluate_retrieval(
            None, [1], [1], None, HAND_GALLERY_PIDS, HAND_GALLERY_CAMIDS, distance=distance
        )


def test_distance_blocks_must_cover_every_query():
    blocks = [np.zeros((2, 6))]
    with pytest.raises(ValueError, match="cover 2 query rows, expected 3"):
        evaluate_retrieval(
            None, [1, 1, 1], [1, 1, 1], None, HAND_GALLERY_PIDS, HAND_GALLERY_CAMIDS,
            distance=blocks,
        )  # fmt: skip


# ---------------------------------------------------------------- the `evaluate` stage


def unit_rows(rng, n, dim):
    x = rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def dataset(tmp_path: Path):
    """Index with 4 train, 6 query and 18 gallery rows; features of the query and gallery split.

    Six identities; each query has gallery images of its identity in two other cameras.
    """
    rng = np.random.default_rng(0)
    rows = [("train", pid, cam) for pid, cam in [(9, 1), (9, 2), (8, 1), (8, 3)]]
    rows += [("query", pid, 1 + pid % 3) for pid in range(6)]
    rows += [("gallery", pid, 1 + (pid + shift) % 3) for pid in range(6) for shift in (1, 2, 2)]
    index = pd.DataFrame(
        {
            "path": [f"/data/{split}/{i:03d}.jpg" for i, (split, _, _) in enumerate(rows)],
            "camid": [cam for _, _, cam in rows],
            "pid": [pid for _, pid, _ in rows],
            "split": [split for split, _, _ in rows],
        }
    )
    index_path = tmp_path / "index.csv"
    index.to_csv(index_path, index=False)
    centres = unit_rows(rng, 6, 16)
    paths = {}
    for split in ("train", "query", "gallery"):
        part = index[index["split"] == split]
        features = centres[part["pid"].to_numpy() % 6] + 1.2 * unit_rows(rng, len(part), 16)
        paths[split] = write_split(tmp_path / f"{split}.h5", features, part, split)
    return index_path, paths


def write_split(path, features, part, split):
    features = features / np.linalg.norm(features, axis=1, keepdims=True)
    attrs = {
        "model": "none",
        "arch": "test",
        "height": 8,
        "width": 4,
        "flip": False,
        "split": split,
    }
    write_features(path, FeatureSet.from_index(features.astype(np.float32), part, attrs))
    return path


def run_stage(*argv):
    args = build_parser().parse_args(["evaluate", *map(str, argv)])
    args._run(args)


def stage_args(dataset, out, *extra):
    index_path, paths = dataset
    return (
        "--index", index_path, "--query-features", paths["query"],
        "--gallery-features", paths["gallery"], "--out", out, *extra,
    )  # fmt: skip


def test_stage_writes_metrics_table(dataset, tmp_path, caplog):
    out = tmp_path / "results" / "metrics.csv"
    caplog.set_level("INFO")
    run_stage(
        *stage_args(dataset, out, "--experiment", "calr", "--dataset", "demo", "--epoch", "3")
    )
    table = pd.read_csv(out)
    assert list(table.columns) == METRICS_COLUMNS
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["experiment"], row["dataset"], row["epoch"]) == ("calr", "demo", 3)
    assert not row["reranking"]
    assert (row["num_query"], row["num_valid_query"]) == (6, 6)

    from pipeline.features.store import read_features

    q = read_features(dataset[1]["query"])
    g = read_features(dataset[1]["gallery"])
    expected = evaluate_retrieval(q.features, q.pid, q.camid, g.features, g.pid, g.camid)
    assert 0 < expected.mAP < 1
    assert row["mAP"] == pytest.approx(expected.mAP)
    assert row["rank1"] == pytest.approx(expected.rank(1))
    assert row["rank10"] == pytest.approx(expected.rank(10))
    assert row["rank5"] == pytest.approx(expected.rank(5))
    assert row["mINP"] == pytest.approx(expected.mINP)
    assert "mAP" in caplog.text and "rank-10" in caplog.text


def test_stage_writes_the_per_query_table(dataset, tmp_path):
    """One row per query in evaluation order, whose means are the metrics table's figures."""
    from pipeline.report.replicates import query_scores
    from pipeline.tables import PER_QUERY

    out, per_query = tmp_path / "metrics.csv", tmp_path / "per_query.csv"
    run_stage(*stage_args(dataset, out, "--per-query", per_query))
    table = PER_QUERY.read(per_query)
    query_rows = pd.read_csv(dataset[0]).query("split == 'query'")
    assert table["query"].tolist() == query_rows.index.tolist()
    assert table["pid"].tolist() == query_rows["pid"].tolist()
    row = pd.read_csv(out).iloc[0]
    scores = query_scores(table, str(per_query))
    np.testing.assert_allclose(
        scores.metrics(("mAP", "rank1", "rank5", "mINP")),
        row[["mAP", "rank1", "rank5", "mINP"]].to_numpy(dtype=float),
    )


def test_stage_reranking(dataset, tmp_path):
    out = tmp_path / "metrics.csv"
    run_stage(*stage_args(dataset, out, "--rerank", "--k1", "4", "--k2", "2", "--lambda", "0.5"))
    row = pd.read_csv(out).iloc[0]
    assert row["reranking"]

    from pipeline.features.store import read_features

    q = read_features(dataset[1]["query"])
    g = read_features(dataset[1]["gallery"])
    blocks = k_reciprocal_distance_blocks(q.features, g.features, k1=4, k2=2, lambda_value=0.5)
    expected = evaluate_retrieval(None, q.pid, q.camid, None, g.pid, g.camid, distance=blocks)
    plain = evaluate_retrieval(q.features, q.pid, q.camid, g.features, g.pid, g.camid)
    assert expected.mAP != plain.mAP  # re-ranking changed the ranking
    assert row["mAP"] == pytest.approx(expected.mAP)
    assert row["mINP"] == pytest.approx(expected.mINP)


def test_stage_rejects_features_of_the_wrong_split(dataset, tmp_path):
    index_path, paths = dataset
    with pytest.raises(PipelineError, match=r"gallery\.h5: 18 of 18 feature rows belong to split"):
        run_stage(
            "--index", index_path, "--query-features", paths["gallery"],
            "--gallery-features", paths["gallery"], "--out", tmp_path / "m.csv",
        )  # fmt: skip
    assert not (tmp_path / "m.csv").exists()


def test_stage_rejects_different_feature_dimensions(dataset, tmp_path):
    index_path, paths = dataset
    index = pd.read_csv(index_path)
    part = index[index["split"] == "gallery"]
    wide = write_split(
        tmp_path / "wide.h5", unit_rows(np.random.default_rng(1), 18, 32), part, "gallery"
    )
    with pytest.raises(PipelineError, match="holds 16-d features but .*wide.h5 holds 32-d"):
        run_stage(
            "--index", index_path, "--query-features", paths["query"],
            "--gallery-features", wide, "--out", tmp_path / "m.csv",
        )  # fmt: skip


def test_stage_rejects_nan_features(dataset, tmp_path):
    index_path, paths = dataset
    index = pd.read_csv(index_path)
    part = index[index["split"] == "query"]
    features = unit_rows(np.random.default_rng(2), 6, 16)
    features[4, 3] = np.nan
    bad = write_split(tmp_path / "nan.h5", features, part, "query")
    with pytest.raises(PipelineError, match=r"nan\.h5: 1 feature row\(s\) contain NaN .* rows 4"):
        run_stage(
            "--index", index_path, "--query-features", bad,
            "--gallery-features", paths["gallery"], "--out", tmp_path / "m.csv",
        )  # fmt: skip


def test_stage_rejects_unnormalised_features(dataset, tmp_path):
    index_path, paths = dataset
    index = pd.read_csv(index_path)
    part = index[index["split"] == "query"]
    features = unit_rows(np.random.default_rng(3), 6, 16)
    attrs = {"model": "none", "arch": "test", "height": 8, "width": 4, "flip": False}
    path = tmp_path / "raw.h5"
    write_features(path, FeatureSet.from_index(3 * features, part, {**attrs, "split": "query"}))
    with pytest.raises(PipelineError, match=r"raw\.h5: 6 feature row\(s\) are not L2-normalised"):
        run_stage(
            "--index", index_path, "--query-features", path,
            "--gallery-features", paths["gallery"], "--out", tmp_path / "m.csv",
        )  # fmt: skip


def test_stage_fails_when_no_query_has_a_valid_match(dataset, tmp_path):
    index_path, paths = dataset
    index = pd.read_csv(index_path)
    # relabel the gallery so that every gallery image is junk
    index.loc[index["split"] == "gallery", "pid"] = -1
    index.to_csv(index_path, index=False)
    part = index[index["split"] == "gallery"]
    junk = write_split(
        tmp_path / "junk.h5", unit_rows(np.random.default_rng(4), 18, 16), part, "gallery"
    )
    with pytest.raises(PipelineError, match="no query in .*query.h5 has a valid match"):
        run_stage(
            "--index", index_path, "--query-features", paths["query"],
            "--gallery-features", junk, "--out", tmp_path / "m.csv",
        )  # fmt: skip
    assert not (tmp_path / "m.csv").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--max-rank", "5"), "--max-rank must be 10 or more, got 5"),
        (("--k1", "0"), "--k1 must be 1 or more, got 0"),
        (("--lambda", "1.5"), r"--lambda must lie in \[0, 1\], got 1.5"),
    ],
)
def test_stage_rejects_bad_options(dataset, tmp_path, extra, message):
    with pytest.raises(PipelineError, match=message):
        run_stage(*stage_args(dataset, tmp_path / "m.csv", *extra))


def test_stage_device_is_numpy_on_the_cpu_and_cuda_on_a_gpu(monkeypatch):
    assert retrieval_device(Device(device="cpu")) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # auto without a visible GPU: NumPy
    assert retrieval_device(Device(device="auto")) is None
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    if torch.cuda.is_available():
        assert retrieval_device(Device(device="cuda")) == "cuda"
    else:
        with pytest.raises(PipelineError, match="no CUDA GPU is visible"):
            retrieval_device(Device(device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_stage_on_cuda_writes_the_figures_of_the_cpu(dataset, tmp_path):
    for device in ("cpu", "cuda"):
        run_stage(*stage_args(dataset, tmp_path / f"{device}.csv", "--device", device))
    figures = ["mAP", "rank1", "rank5", "rank10", "mINP"]
    on_cpu, on_gpu = (pd.read_csv(tmp_path / f"{d}.csv")[figures] for d in ("cpu", "cuda"))
    assert np.allclose(on_gpu.to_numpy(), on_cpu.to_numpy(), rtol=0, atol=1e-6)
