"""Sparse, blockwise k-reciprocal re-ranking against the dense formulation of the published code."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluate.rerank import _smallest, k_reciprocal_distance_blocks


def dense_re_ranking(query, gallery, k1, k2, lambda_value):
    """Zhong et al. (2017) as published: dense (Q+G) x (Q+G) matrices, a loop per image.

    Neighbour lists come from a stable argsort of the distances (ties by image order).
    """
    features = np.concatenate([query, gallery])
    num_query, num_images = len(query), len(features)
    distance = (2 - 2 * (features @ features.T)).astype(np.float64)
    initial_rank = np.argsort(distance, axis=1, kind="stable")
    original = distance / distance.max(axis=1, keepdims=True)

    half = int(np.around(k1 / 2))
    V = np.zeros((num_images, num_images))
    for i in range(num_images):
        forward = initial_rank[i, : k1 + 1]
        backward = initial_rank[forward, : k1 + 1]
        reciprocal = forward[np.where(backward == i)[0]]
        expansion = reciprocal
        for candidate in reciprocal:
            candidate_forward = initial_rank[candidate, : half + 1]
            candidate_backward = initial_rank[candidate_forward, : half + 1]
            candidate_reciprocal = candidate_forward[np.where(candidate_backward == candidate)[0]]
            shared = np.intersect1d(candidate_reciprocal, reciprocal)
            if len(shared) > 2 / 3 * len(candidate_reciprocal):
                expansion = np.append(expansion, candidate_reciprocal)
        expansion = np.unique(expansion)
        weight = np.exp(-original[i, expansion])
        V[i, expansion] = weight / weight.sum()
    if k2 != 1:
        V = np.stack([V[initial_rank[i, :k2]].mean(axis=0) for i in range(num_images)])

    jaccard = np.zeros((num_query, num_images - num_query))
    for i in range(num_query):
        for j in range(num_images - num_query):
            intersection = np.minimum(V[i], V[num_query + j]).sum()
            jaccard[i, j] = 1 - intersection / (2 - intersection)
    return (1 - lambda_value) * jaccard + lambda_value * original[:num_query, num_query:]


def unit_rows(rng, n, dim):
    x = rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(rng, num_query, num_gallery, dim=8, ids=6):
    """Unit features around a few identity centres, so reciprocal neighbours exist."""
    centres = unit_rows(rng, ids, dim)
    x = centres[rng.integers(0, ids, num_query + num_gallery)] + 0.4 * unit_rows(
        rng, num_query + num_gallery, dim
    )
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x[:num_query], x[num_query:]


def tied_unit_rows(rng, n, dim=8):
    """Unit rows with four entries of +-0.5: every distance is exact, many tie, some rows repeat."""
    x = np.zeros((n, dim), dtype=np.float32)
    for row in x:
        row[rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return x


def sparse_re_ranking(query, gallery, **kwargs):
    blocks = list(k_reciprocal_distance_blocks(query, gallery, **kwargs))
    assert all(b.dtype == np.float32 for b in blocks)
    return np.concatenate(blocks)


@pytest.mark.parametrize("chunk_size", [1, 7, None])
@pytest.mark.parametrize(("k1", "k2", "lambda_value"), [(5, 3, 0.3), (4, 1, 0.5), (6, 9, 0.0)])
def test_sparse_matches_dense(chunk_size, k1, k2, lambda_value):
    query, gallery = clustered(np.random.default_rng(k1), 12, 40)
    expected = dense_re_ranking(query, gallery, k1, k2, lambda_value)
    result = sparse_re_ranking(
        query, gallery, k1=k1, k2=k2, lambda_value=lambda_value, chunk_size=chunk_size
    )
    assert result.shape == (12, 40)
    np.testing.assert_allclose(result, expected, atol=2e-6)


def test_sparse_matches_dense_with_default_parameters():
    query, gallery = clustered(np.random.default_rng(7), 20, 70, dim=16, ids=10)
    expected = dense_re_ranking(query, gallery, 20, 6, 0.3)
    np.testing.assert_allclose(sparse_re_ranking(query, gallery), expected, atol=2e-6)


@pytest.mark.parametrize("seed", range(3))
def test_sparse_matches_dense_with_ties_and_duplicates(seed):
    rng = np.random.default_rng(seed)
    features = tied_unit_rows(rng, 40)[rng.integers(0, 40, 60)]  # 60 of 40: duplicates
    query, gallery = features[:15], features[15:]
    expected = dense_re_ranking(query, gallery, 6, 3, 0.3)
    result = sparse_re_ranking(query, gallery, k1=6, k2=3, chunk_size=4)
    np.testing.assert_allclose(result, expected, atol=2e-6)


def test_fewer_images_than_neighbours():
    query, gallery = clustered(np.random.default_rng(3), 3, 5)
    expected = dense_re_ranking(query, gallery, 20, 6, 0.3)
    np.testing.assert_allclose(sparse_re_ranking(query, gallery), expected, atol=2e-6)


def test_lambda_one_gives_the_row_normalised_original_distance():
    query, gallery = clustered(np.random.default_rng(4), 5, 9)
    features = np.concatenate([query, gallery])
    distance = 2 - 2 * (features @ features.T).astype(np.float64)
    expected = (distance / distance.max(axis=1, keepdims=True))[:5, 5:]
    result = sparse_re_ranking(query, gallery, k1=3, lambda_value=1.0)
    np.testing.assert_allclose(result, expected, atol=1e-6)


def test_smallest_orders_by_distance_then_column():
    distance = np.array(
        [
            [0.3, 0.1, 0.3, 0.0, 0.3, 0.3],
            [0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
            [0.2, 0.1, 0.0, 0.9, 0.1, 0.2],
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(
        _smallest(distance, 4), [[3, 1, 0, 2], [0, 1, 2, 3], [2, 1, 4, 0]]
    )
    np.testing.assert_array_equal(
        _smallest(distance, 6), np.argsort(distance, axis=1, kind="stable")
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k1": 0}, "k1 and k2 must be at least 1"),
        ({"k2": 0}, "k1 and k2 must be at least 1"),
        ({"lambda_value": -0.1}, r"lambda_value must lie in \[0, 1\]"),
    ],
)
def test_rejects_bad_parameters(kwargs, message):
    query, gallery = clustered(np.random.default_rng(5), 2, 3)
    with pytest.raises(ValueError, match=message):
        k_reciprocal_distance_blocks(query, gallery, **kwargs)


def test_rejects_features_of_different_widths():
    rng = np.random.default_rng(6)
    with pytest.raises(ValueError, match="equal widths"):
        k_reciprocal_distance_blocks(unit_rows(rng, 2, 4), unit_rows(rng, 3, 5))
