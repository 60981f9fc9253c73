"""Global clusterers: Infomap on the kNN graph and DBSCAN on the sparse Jaccard graph."""

import subprocess
import sys

import numpy as np
import pytest
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score

from pipeline.cluster.dbscan import dbscan_clusters
from pipeline.cluster.global_infomap import infomap_clusters
from pipeline.cluster.jaccard import jaccard_dense
from pipeline.cluster.knn import knn
from pipeline.cluster.synthetic import planted_features


def planted(n_groups=20, per_group=12, dim=32, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_groups, dim))
    groups = np.repeat(np.arange(n_groups), per_group)
    x = centres[groups] + spread * rng.standard_normal((len(groups), dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), groups


@pytest.mark.parametrize("tune_iterations", [0, 1])
def test_infomap_recovers_planted_groups_and_is_deterministic(tune_iterations):
    x, groups = planted()
    sims, idx = knn(x, 15)
    first = infomap_clusters(sims, idx, seed=7, tune_iterations=tune_iterations)
    again = infomap_clusters(sims, idx, seed=7, tune_iterations=tune_iterations)
    np.testing.assert_array_equal(first, again)
    assert adjusted_rand_score(first, groups) == 1.0
    assert sorted(np.unique(first)) == list(range(20))


def test_images_without_a_strong_enough_neighbour_are_outliers():
    x, _ = planted(n_groups=3, per_group=10)
    lonely = np.eye(32, dtype=np.float32)[:2]  # far from every group and from each other
    x = np.concatenate([x, lonely])
    sims, idx = knn(x, 15)
    labels = infomap_clusters(sims, idx, min_sim=0.5)
    assert (labels[-2:] == -1).all() and (labels[:-2] >= 0).all()


def test_clusters_below_min_size_become_outliers():
    x, groups = planted(n_groups=4, per_group=6)
    keep = (groups != 3) | (np.arange(len(groups)) % 6 < 3)  # group 3 keeps 3 images
    x, groups = x[keep], groups[keep]
    sims, idx = knn(x, 15)
    labels = infomap_clusters(sims, idx, min_sim=0.5, min_size=4)
    assert (labels[groups == 3] == -1).all()
    assert adjusted_rand_score(labels[groups != 3], groups[groups != 3]) == 1.0
    assert labels.max() == 2


def test_leaving_isolated_images_out_equals_clustering_without_them():
    # as the released code, which builds Infomap's network from the links alone
    x, _, _ = planted_features(400, 64, 4, noise=1.5, seed=0)
    sims, idx = knn(x, 14)
    linked = sims >= 0.5
    isolated = ~linked.any(axis=1) & (np.bincount(idx[linked], minlength=len(x)) == 0)
    assert isolated.sum() > 20
    keep = np.flatnonzero(~isolated)
    position = np.full(len(x), -1)
    position[keep] = np.arange(len(keep))
    options = {"min_size": 5, "tune_iterations": 0, "infomap_seed": 123}
    without = infomap_clusters(sims[keep], position[idx[keep]], **options)
    left_out = infomap_clusters(sims, idx, **options, isolated_nodes=False)
    np.testing.assert_array_equal(left_out[keep], without)
    assert (left_out[isolated] == -1).all()
    # as nodes they draw teleportation flow and move the others' modules
    assert not np.array_equal(infomap_clusters(sims, idx, **options), left_out)


def test_infomap_seed_must_be_in_infomaps_range():
    with pytest.raises(ValueError, match="infomap_seed must be >= 1"):
        infomap_clusters(np.full((2, 1), 0.9, np.float32), np.array([[1], [0]]), infomap_seed=0)


def test_dbscan_on_the_sparse_graph_equals_dbscan_on_the_dense_matrix():
    x, groups = planted(spread=0.5, seed=2)
    _, idx = knn(x, 29)
    sparse_labels = dbscan_clusters(x, idx, k1=30, k2=6)
    dense = DBSCAN(eps=0.6, min_samples=4, metric="precomputed").fit_predict(
        jaccard_dense(x, idx, 30, 6)
    )
    assert adjusted_rand_score(sparse_labels, dense) == 1.0
    np.testing.assert_array_equal(sparse_labels < 0, dense < 0)
    assert adjusted_rand_score(sparse_labels, groups) > 0.9


def test_infomap_survives_faiss_imported_after_it():
    # faiss and infomap share SWIG's type table: reading Infomap's modules through its Python
    # iterators segfaults once faiss is imported after infomap (a fresh interpreter is needed)
    code = (
        "import infomap, faiss, numpy as np\n"
        "from pipeline.cluster.global_infomap import infomap_clusters\n"
        "idx = np.array([[1, 2], [0, 2], [0, 1], [4, 5], [3, 5], [3, 4]])\n"
        "labels = infomap_clusters(np.full((6, 2), 0.9, np.float32), idx, min_size=3)\n"
        "assert list(labels) == [0, 0, 0, 1, 1, 1], labels\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
