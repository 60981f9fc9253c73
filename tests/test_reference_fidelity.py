"""Reference mode against a transcription of the released code, on a small planted set.

The transcription below is written for this test from the description of the release
(``calr/utils/infomap_cluster.py`` and ``inter_camera_training.py`` of leeBooMla/CALR), with
its loops and its data layout, not from its code:

- faiss returns the ``k = 15`` most similar rows *including the row itself*, as distances
  ``1 - s`` in float32, nearest first;
- ``mean`` is the mean of that whole ``N x k`` distance array, the rows' own entries included;
- walking each row's list, the row itself is skipped; a neighbour at distance ``<= 1 - min_sim``
  becomes a graph link of weight ``1 - d`` and adds ``1 / (d + mean)`` to the row's score; the
  first farther neighbour ends the walk; a row without any link is a "single" (outlier);
- Infomap (two-level, directed, Infomap's default seed and tuning) runs on the links alone;
  modules of at most 4 images are dissolved;
- in each cluster, walking its members in row order, the pivot is the last one whose score
  exceeds the mean score of all rows;
- each pivot discards the members of its cluster seen by its camera that are outside its local
  cluster (p = 1).
"""

import shlex
import tempfile
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.cluster.global_infomap import infomap_clusters
from pipeline.cluster.knn import knn
from pipeline.cluster.pivots import (
    knn_mean_distance,
    mean_pairwise_distance,
    pivot_scores,
    select_pivots,
)
from pipeline.cluster.refine import refine_epoch, refine_labels
from pipeline.cluster.synthetic import planted_features
from pipeline.config import command_line, load_schema, validate_config

K, MIN_SIM = 15, 0.5
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def planted():
    """500 planted images (4 cameras, 64 dimensions) and 25 random ones, which link to nothing.

    Local clusters: the identities, a fifth of the images split off into a second local cluster.
    """
    features, camids, pids = planted_features(500, 64, 4, noise=0.7, seed=2)
    rng = np.random.default_rng(2)
    junk = rng.standard_normal((25, 64)).astype(np.float32)
    features = np.concatenate([features, junk / np.linalg.norm(junk, axis=1, keepdims=True)])
    camids = np.concatenate([camids, rng.integers(1, 5, len(junk))])
    pids = np.concatenate([pids, pids.max() + 1 + np.arange(len(junk))])
    local = 2 * pids + (rng.random(len(pids)) < 0.2)
    links, scores, singles = release_graph(features)
    clusters = release_clusters(len(features), links, singles)
    pivots, discarded = release_refinement(clusters, camids, local, scores)
    return {
        "features": features,
        "camids": camids,
        "local": local,
        "scores": scores,
        "singles": singles,
        "clusters": clusters,
        "pivots": pivots,
        "discarded": discarded,
    }


def release_graph(features):
    """Links, scores and singles as the release's kNN search and link walk make them."""
    index = faiss.IndexFlatIP(features.shape[1])
    index.add(features)
    sims, nbrs = index.search(features, K)
    dists = 1 - sims.astype(np.float32)
    mean = np.mean(dists)
    links, scores, singles = [], np.zeros(len(features)), []
    for i in range(len(features)):
        count = 0
        for j in range(K):
            if nbrs[i][j] == i:
                continue
            if dists[i][j] <= 1 - MIN_SIM:
                count += 1
                links.append((i, int(nbrs[i][j]), float(1 - dists[i][j])))
                scores[i] += 1 / (dists[i][j] + mean)
            else:
                break
        if count == 0:
            singles.append(i)
    return links, scores, singles


def release_clusters(n, links, singles):
    import infomap

    im = infomap.Infomap("--two-level --directed --silent")
    for i, j, weight in links:
        im.add_link(i, j, weight)
    result = im.run()
    with tempfile.TemporaryDirectory() as tmp:
        result.write_clu(Path(tmp) / "modules.clu")
        table = pd.read_csv(Path(tmp) / "modules.clu", sep=" ", comment="#", header=None)
    modules = np.full(n, -1)
    modules[table[0].to_numpy()] = table[1].to_numpy()
    modules[singles] = -1
    labels = np.full(n, -1)
    kept = [m for m in np.unique(modules[modules >= 0]) if (modules == m).sum() > 4]
    for label, module in enumerate(kept):
        labels[modules == module] = label
    return labels


def release_refinement(clusters, camids, local, scores):
    mean_score = np.mean(scores)
    pivot = {}
    for row, cluster in enumerate(clusters):
        if cluster >= 0 and scores[row] > mean_score:
            pivot[cluster] = row
    discarded = np.zeros(len(clusters), dtype=bool)
    for cluster, p in pivot.items():
        for row in np.flatnonzero(clusters == cluster):
            if camids[row] == camids[p] and local[row] != local[p]:
                discarded[row] = True
    return sorted(pivot.values()), discarded


def test_reference_infomap_settings_give_the_release_clusters(planted):
    features, expected = planted["features"], planted["clusters"]
    sims, idx = knn(features, K - 1)
    reference = {"min_size": 5, "tune_iterations": 0, "infomap_seed": 123}
    clusters = infomap_clusters(sims, idx, MIN_SIM, **reference, isolated_nodes=False)
    np.testing.assert_array_equal(clusters, expected)
    # images without any link (the random ones) change the others' partition as nodes
    assert len(planted["singles"]) > 20
    assert not np.array_equal(infomap_clusters(sims, idx, MIN_SIM, **reference), expected)
    assert not np.array_equal(infomap_clusters(*knn(features, K), MIN_SIM), expected)


def test_reference_mode_makes_the_release_pivots_and_decisions(planted):
    features, camids, local, clusters = (
        planted[key] for key in ("features", "camids", "local", "clusters")
    )
    sims, _ = knn(features, K)  # the global stage's lists: reference mode uses the first 14
    rng = np.random.default_rng(0)
    ours = refine_epoch(features, clusters, camids, local, 1.0, rng, "reference", K, "exact", sims)
    scores = pivot_scores(sims[:, : K - 1], knn_mean_distance(sims[:, : K - 1]), MIN_SIM)
    np.testing.assert_allclose(scores, planted["scores"], rtol=1e-5)
    np.testing.assert_array_equal(np.flatnonzero(ours.vouching), planted["pivots"])
    np.testing.assert_array_equal(ours.discarded, planted["discarded"])
    # clusters hold several candidate pivots, of which the last counts; many samples go
    assert ours.pivots.sum() > 2 * ours.vouching.sum()
    assert 0.2 < planted["discarded"].mean() < 0.6


@pytest.mark.parametrize(
    "departure",
    ["15 other neighbours", "every neighbour counted", "mean over all pairs", "self not in mean"],
)
def test_each_departure_from_the_release_scores_changes_decisions(planted, departure):
    # so the equality above checks all three points of the release's Eq. 4
    features, camids, local, clusters = (
        planted[key] for key in ("features", "camids", "local", "clusters")
    )
    sims, _ = knn(features, K)
    first = sims[:, : K - 1]
    scores = {
        "15 other neighbours": lambda: pivot_scores(sims, knn_mean_distance(sims), MIN_SIM),
        "every neighbour counted": lambda: pivot_scores(first, knn_mean_distance(first)),
        "mean over all pairs": lambda: pivot_scores(
            first, mean_pairwise_distance(features), MIN_SIM
        ),
        "self not in mean": lambda: pivot_scores(first, float(np.mean(1.0 - first)), MIN_SIM),
    }[departure]()
    pivots = select_pivots(scores, clusters)
    _, discarded = refine_labels(
        clusters, camids, local, pivots, 1.0, np.random.default_rng(0), "reference"
    )
    assert not np.array_equal(discarded, planted["discarded"])


def test_config_reference_runs_the_stages_as_the_release(planted, tmp_path):
    """config/reference.yaml's global clustering and refinement settings, passed to the stages
    as the workflow's rules pass them, give the release's clusters and discard decisions."""
    from pipeline.cli import main
    from pipeline.features.store import FeatureSet, write_features
    from pipeline.io import read_table, write_table

    schema = load_schema(ROOT / "workflow" / "schemas" / "config.schema.yaml")
    config = validate_config(
        yaml.safe_load((ROOT / "config" / "reference.yaml").read_text()), schema
    )
    inter, sections = config["inter"], schema["properties"]["inter"]["properties"]
    infomap = command_line(
        inter["clusterer"]["infomap"], sections["clusterer"]["properties"]["infomap"]
    )
    refine = command_line(inter["refine"], sections["refine"])
    n = len(planted["features"])
    rows = np.arange(100, 100 + n)
    write_features(
        tmp_path / "train.h5",
        FeatureSet(
            features=planted["features"],
            index_row=rows,
            camid=planted["camids"],
            pid=np.full(n, -1),
            path=np.array([f"{i}.jpg" for i in range(n)], dtype=object),
            attrs={
                "model": "m",
                "arch": "a",
                "height": 8,
                "width": 4,
                "flip": False,
                "split": "train",
            },
        ),
    )
    write_table(
        pd.DataFrame(
            {"index_row": rows, "camid": planted["camids"], "local_label": planted["local"]}
        ),
        tmp_path / "local.csv",
    )
    main(["cluster-global", "--features", str(tmp_path / "train.h5"), *shlex.split(infomap),
          "--out", str(tmp_path / "clusters.csv"), "--summary", str(tmp_path / "clusters.json"),
          "--out-neighbours", str(tmp_path / "neighbours.npz")])  # fmt: skip
    main(["refine", "--clusters", str(tmp_path / "clusters.csv"), "--features",
          str(tmp_path / "train.h5"), "--neighbours", str(tmp_path / "neighbours.npz"),
          "--local-labels", str(tmp_path / "local.csv"), *shlex.split(refine), "--out",
          str(tmp_path / "refined.csv"), "--summary", str(tmp_path / "refined.json")])  # fmt: skip
    refined = read_table(tmp_path / "refined.csv")
    np.testing.assert_array_equal(refined["cluster"], planted["clusters"])
    np.testing.assert_array_equal(refined["discarded"], planted["discarded"])
    assert refined["discarded"].sum() > 50
