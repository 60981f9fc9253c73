"""pipeline.cluster.jaccard against a plain, loop-by-loop k-reciprocal Jaccard distance."""

import numpy as np
import pytest

from pipeline.cluster.jaccard import jaccard_dense, jaccard_graph
from pipeline.cluster.knn import knn


def blobs(n=90, centres=6, dim=12, spread=0.5, seed=1):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim))
    x = c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def loop_jaccard(x, k1, k2):
    """Zhong et al.'s k-reciprocal Jaccard distance written out one image at a time."""
    n = len(x)
    sims = x.astype(np.float64) @ x.T.astype(np.float64)
    rank = np.argsort(-(sims + 10 * np.eye(n)), axis=1, kind="stable")[:, :k1]  # self first

    def reciprocal(i, k):
        return np.array([j for j in rank[i, : k + 1] if i in rank[j, : k + 1]])

    encoding = np.zeros((n, n))
    for i in range(n):
        members = reciprocal(i, k1)
        expanded = list(members)
        for c in members:
            candidate = reciprocal(c, int(np.around(k1 / 2)))
            if len(np.intersect1d(candidate, members)) > 2 / 3 * len(candidate):
                expanded += list(candidate)
        expanded = np.unique(expanded)
        weights = np.exp(-(2 - 2 * sims[i, expanded]))
        encoding[i, expanded] = weights / weights.sum()
    if k2 > 1:
        encoding = np.stack([encoding[rank[i, :k2]].mean(axis=0) for i in range(n)])
    dist = np.empty((n, n))
    for i in range(n):
        shared = np.minimum(encoding[i], encoding).sum(axis=1)
        dist[i] = 1 - shared / (2 - shared)
    return np.maximum(dist, 0)


@pytest.mark.parametrize(("k1", "k2"), [(15, 4), (8, 1), (10, 6)])
def test_dense_matches_the_loop_definition(k1, k2):
    x = blobs()
    _, idx = knn(x, max(k1, k2) - 1)
    np.testing.assert_allclose(jaccard_dense(x, idx, k1, k2), loop_jaccard(x, k1, k2), atol=1e-5)


def test_graph_holds_every_distance_below_one_and_nothing_else():
    x = blobs()
    _, idx = knn(x, 14)
    graph = jaccard_graph(x, idx, 15, 4)
    dense = loop_jaccard(x, 15, 4)
    off_diagonal = ~np.eye(len(x), dtype=bool)
    stored = np.zeros_like(off_diagonal)
    coo = graph.tocoo()
    stored[coo.row, coo.col] = True
    np.testing.assert_array_equal(stored, (dense < 1 - 1e-7) & off_diagonal)
    np.testing.assert_allclose(coo.data, dense[coo.row, coo.col], atol=1e-5)
    assert (graph != graph.T).nnz == 0


def test_identical_encodings_are_stored_as_explicit_zero_distances():
    x = blobs(n=30)
    x = np.concatenate([x, x[:1], x[:1]])  # three copies of row 0 share their encoding
    _, idx = knn(x, 14)
    graph = jaccard_graph(x, idx, 15, 4).tocsr()
    assert graph[0, 30] == 0 and 30 in graph.indices[graph.indptr[0] : graph.indptr[1]]


def test_too_few_neighbours_is_an_error():
    x = blobs(n=20)
    _, idx = knn(x, 5)
    with pytest.raises(ValueError, match="needs 14 neighbours per row, got 5"):
        jaccard_graph(x, idx, 15, 4)
