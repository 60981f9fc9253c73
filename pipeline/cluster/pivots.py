"""Pivot selection (paper Eq. 4), recomputed every epoch on the current features.

    score(i) = sum_{j in top_k(i)} 1 / (dist(i, j) + mean(dist))                        (4)

with ``dist = 1 - cosine similarity`` of L2-normalised features, ``top_k(i)`` the ``k`` (15)
nearest *other* images of ``i`` (:func:`pipeline.cluster.knn.knn`), and ``mean(dist)`` the mean
distance over all pairs of distinct images, computed exactly in O(N D) without any N x N matrix
by :func:`mean_pairwise_distance`. Pivots are the images whose score exceeds the mean score.

Differences from the released code, which follows the paper less closely: there ``mean(dist)``
is the mean over the kNN lists only (self included, at distance 0) and the sum runs only over
neighbours above Infomap's ``min_sim``.
"""

from __future__ import annotations

import numpy as np


def mean_pairwise_distance(features: np.ndarray, chunk_size: int = 8192) -> float:
    """Mean of ``1 - x_i . x_j`` over the N (N - 1) ordered pairs with ``i != j``.

    Uses ``sum_{i != j} x_i . x_j = |sum_i x_i|^2 - sum_i |x_i|^2``, which for unit vectors is
    ``|sum_i x_i|^2 - N``; the actual squared norms are used, so rows that are normalised only
    to float precision cost no accuracy. Pairs ``i = j`` are excluded. Accumulates in float64,
    ``chunk_size`` rows at a time (row norms in the features' precision).
    """
    n = len(features)
    if n < 2:
        raise ValueError(f"the mean pairwise distance needs at least 2 rows, got {n}")
    total = np.zeros(features.shape[1], dtype=np.float64)
    squared_norms = 0.0
    for start in range(0, n, chunk_size):
        block = np.asarray(features[start : start + chunk_size])
        total += block.sum(axis=0, dtype=np.float64)
        squared_norms += float(np.einsum("nd,nd->n", block, block).sum(dtype=np.float64))
    return 1.0 - (float(total @ total) - squared_norms) / (n * (n - 1))


def pivot_scores(similarities: np.ndarray, mean_distance: float) -> np.ndarray:
    """Eq. 4 for every row, from its kNN similarities (self excluded, ``-inf`` = missing).

    Distances are clipped at 0 (float error can push a similarity just above 1); a missing
    neighbour has infinite distance and adds 0.
    """
    dist = np.maximum(1.0 - similarities.astype(np.float64), 0.0)
    return (1.0 / (dist + mean_distance)).sum(axis=1)


def select_pivots(scores: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Pivots: images scoring above the mean score of *all* images and inside a global cluster.

    The mean runs over every image, as the paper states; outliers (cluster -1) are then
    excluded because a pivot refines its own global cluster and an outlier has none.
    """
    return (scores > scores.mean()) & (clusters >= 0)
