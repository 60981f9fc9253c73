"""Pivot selection (paper Eq. 4), recomputed every epoch on the current features.

    score(i) = sum_{j in top_k(i)} 1 / (dist(i, j) + mean(dist))                        (4)

with ``dist = 1 - cosine similarity`` of L2-normalised features. Pivots are the images whose
score exceeds the mean score of all images (:func:`select_pivots`). Two readings:

- **paper** (default): ``top_k(i)`` the ``k`` (15) nearest *other* images of ``i``
  (:func:`pipeline.cluster.knn.knn`), every one of them counted, and ``mean(dist)`` the mean
  distance over all pairs of distinct images, "the mean distance across all pairs", computed
  exactly in O(N D) without any N x N matrix by :func:`mean_pairwise_distance`.
- **reference**, the released code (``calr/utils/infomap_cluster.py``: ``get_dist_nbr`` and
  ``get_links``), which scores the pivots while it builds Infomap's graph: its kNN search asks
  faiss for ``k = 15`` results *including the image itself*, so ``top_k(i)`` are the 14 nearest
  other images; the sum runs only over the neighbours that became graph links (similarity at
  least Infomap's ``min_sim``, 0.5); and ``mean(dist)`` is the mean over the ``N x k`` kNN
  lists, the image itself included at distance 0 (:func:`knn_mean_distance`). Call
  :func:`pivot_scores` with ``min_sim`` on the ``k - 1`` lists that ``knn`` returns.
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


def knn_mean_distance(similarities: np.ndarray) -> float:
    """The released code's ``mean(dist)``: the mean of ``1 - s`` over kNN lists with self.

    ``similarities`` are the lists :func:`pipeline.cluster.knn.knn` returns (N x (k - 1), self
    excluded, ``-inf`` = missing); each row's own entry, which the release's search returns
    first at distance 0 (up to float32 rounding), is added back, so the mean runs over ``N k``
    distances when no neighbour is missing. Missing neighbours are left out of the mean (the
    release would average faiss's placeholder distance into it). Accumulates in float64.
    """
    sims = np.asarray(similarities)
    present = np.isfinite(sims)
    total = float(np.where(present, 1.0 - sims.astype(np.float64), 0.0).sum())
    return total / (len(sims) + int(present.sum()))


def pivot_scores(
    similarities: np.ndarray, mean_distance: float, min_sim: float | None = None
) -> np.ndarray:
    """Eq. 4 for every row, from its kNN similarities (self excluded, ``-inf`` = missing).

    With ``min_sim`` only the neighbours whose similarity is at least ``min_sim`` count (the
    released code's sum over graph links); ``None`` (the paper) counts all ``k``. Distances are
    clipped at 0 (float error can push a similarity just above 1); a missing or uncounted
    neighbour adds 0.
    """
    sims = similarities.astype(np.float64)
    if min_sim is not None:
        sims = np.where(sims >= min_sim, sims, -np.inf)
    dist = np.maximum(1.0 - sims, 0.0)
    return (1.0 / (dist + mean_distance)).sum(axis=1)


def select_pivots(scores: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Pivots: images scoring above the mean score of *all* images and inside a global cluster.

    The mean runs over every image, as the paper states; outliers (cluster -1) are then
    excluded because a pivot refines its own global cluster and an outlier has none.
    """
    return (scores > scores.mean()) & (clusters >= 0)
