"""pipeline.cluster.agglomerative: the sparse (graph) average linkage against the dense one."""

import logging

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from pipeline.cluster.agglomerative import (
    dense_average_linkage,
    graph_average_linkage,
    intra_camera_clusters,
    n_local_clusters,
)
from pipeline.errors import PipelineError


def positive_unit_rows(n, dim, seed):
    x = np.abs(np.random.default_rng(seed).standard_normal((n, dim)))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def planted(n_groups=12, per_group=8, dim=24, spread=0.15, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_groups, dim))
    groups = np.repeat(np.arange(n_groups), per_group)
    x = centres[groups] + spread * rng.standard_normal((len(groups), dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), groups


def same_partition(a, b):
    return adjusted_rand_score(a, b) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_clusters", [2, 7, 30, 119])
def test_complete_graph_reproduces_dense_average_linkage_exactly(seed, n_clusters):
    x = positive_unit_rows(120, 6, seed)
    sims = x @ x.T
    rows, cols = np.triu_indices(len(x), 1)
    dist = 1 - sims
    np.fill_diagonal(dist, 0)
    sparse_labels = graph_average_linkage(len(x), rows, cols, sims[rows, cols], n_clusters)
    assert sparse_labels.max() + 1 == n_clusters
    assert same_partition(sparse_labels, dense_average_linkage(dist, n_clusters))


def test_edges_given_in_both_directions_count_once():
    x = positive_unit_rows(60, 5, 3)
    sims = x @ x.T
    rows, cols = np.triu_indices(60, 1)
    once = graph_average_linkage(60, rows, cols, sims[rows, cols], 9)
    twice = graph_average_linkage(
        60,
        np.concatenate([rows, cols]),
        np.concatenate([cols, rows]),
        np.concatenate([sims[rows, cols]] * 2),
        9,
    )
    np.testing.assert_array_equal(once, twice)


@pytest.mark.parametrize("distance", ["cosine", "jaccard"])
def test_sparse_and_dense_agree_on_planted_groups(distance):
    x, groups = planted()
    dense = intra_camera_clusters(x, 12, distance, sparse_threshold=10**6)
    sparse = intra_camera_clusters(x, 12, distance, sparse_threshold=0)
    assert same_partition(dense, groups)
    assert same_partition(sparse, groups)


def test_sparse_jaccard_equals_dense_jaccard_on_harder_data():
    x, _ = planted(n_groups=20, per_group=10, spread=0.45, seed=4)
    dense = intra_camera_clusters(x, 40, "jaccard", sparse_threshold=10**6)
    sparse = intra_camera_clusters(x, 40, "jaccard", sparse_threshold=0)
    assert same_partition(dense, sparse)


def test_sparse_cosine_stays_close_to_dense_on_harder_data():
    x, _ = planted(n_groups=20, per_group=10, spread=0.45, seed=4)
    dense = intra_camera_clusters(x, 40, "cosine", sparse_threshold=10**6)
    sparse = intra_camera_clusters(x, 40, "cosine", k=20, sparse_threshold=0)
    assert adjusted_rand_score(dense, sparse) > 0.8


def test_disconnected_graph_gives_one_cluster_per_component(caplog):
    # two triangles with no edge between them, asked for one cluster
    rows = np.array([0, 1, 0, 3, 4, 3])
    cols = np.array([1, 2, 2, 4, 5, 5])
    with caplog.at_level(logging.WARNING):
        labels = graph_average_linkage(6, rows, cols, np.full(6, 0.9), 1)
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1])
    assert "2 connected components" in caplog.text


def test_non_positive_similarities_are_no_edges():
    labels = graph_average_linkage(3, np.array([0, 1]), np.array([1, 2]), np.array([0.5, 0.0]), 1)
    np.testing.assert_array_equal(labels, [0, 0, 1])


def test_local_cluster_count_is_images_over_ratio():
    assert n_local_clusters(52, 5, camera=3) == 10
    assert n_local_clusters(10, 5, camera=3) == 2


def test_camera_with_too_few_images_is_named():
    with pytest.raises(PipelineError, match=r"camera 4: 9 image\(s\), fewer than 2 x ratio = 10"):
        n_local_clusters(9, 5, camera=4)


def test_no_edges_leaves_singletons():
    labels = graph_average_linkage(4, np.array([0]), np.array([0]), np.array([1.0]), 2)
    np.testing.assert_array_equal(labels, [0, 1, 2, 3])
