"""k-reciprocal Jaccard distance for clustering (Zhong et al., CVPR 2017), sparse: no N x N matrix.

This is the distance of the released CALR code for intra-camera clustering (k1=15, k2=4) and of
ClusterContrast's DBSCAN (k1=30, k2=6), computed as in ClusterContrast's
``compute_jaccard_distance`` by the shared :mod:`pipeline.cluster.kreciprocal` (whose docstring
has the steps): each image's ranking holds ``k1`` entries *including the image itself* (itself
first, then its :func:`pipeline.cluster.knn.knn` neighbours), so ``R(i, k1)`` is drawn from
``k1`` entries and ``R(i, k1 / 2)`` from ``round(k1 / 2) + 1``; the kernel's distance is
``2 - 2 x_i.x_j`` (dot products in float32), ``V`` is stored in float32 and the query expansion
averages over the image and its ``k2 - 1`` nearest neighbours.

A pair whose encodings share no column is at distance exactly 1, so the full matrix is 1 except
on the sparsity pattern of ``V V^T``. :func:`jaccard_graph` computes the distance on exactly that
pattern (about a hundred pairs per row, not N), which is all the sparse clusterers need;
:func:`jaccard_dense` spreads it into the full matrix for small N and for tests.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from scipy import sparse

from pipeline.cluster import kreciprocal


def jaccard_graph(features: np.ndarray, indices: np.ndarray, k1: int, k2: int) -> sparse.csr_array:
    """Symmetric sparse matrix of every k-reciprocal Jaccard distance below 1.

    ``indices`` are kNN lists without self (from :func:`pipeline.cluster.knn.knn`) with at
    least ``max(k1, k2) - 1`` columns; ``-1`` entries (missing neighbours) are ignored. The
    candidate pairs are the pattern of ``V V^T`` (pairs whose encodings share a column); every
    other pair is at distance exactly 1, so nothing below 1 is lost. Pairs at distance 1 and the
    diagonal are left out, and distance-0 pairs are stored as explicit zeros, so a stored entry
    always means "neighbours at this distance" (what DBSCAN with ``metric="precomputed"`` and
    the graph-constrained linkage expect).
    """
    if k1 < 2 or k2 < 1:
        raise ValueError(f"need k1 >= 2 and k2 >= 1, got k1={k1}, k2={k2}")
    if indices.shape[1] < max(k1, k2) - 1:
        raise ValueError(
            f"k-reciprocal encoding needs {max(k1, k2) - 1} neighbours per row, "
            f"got {indices.shape[1]}"
        )
    n = len(indices)
    ranking = np.concatenate([np.arange(n)[:, None], indices[:, : max(k1, k2) - 1]], axis=1)
    distances = partial(
        kreciprocal.pair_distances, partial(_rows, features), features.shape[1], dtype=np.float32
    )
    encoding = kreciprocal.encode(ranking[:, :k1], k1, distances, np.float32)
    encoding = kreciprocal.local_query_expansion(encoding, ranking, k2)
    lo, hi, dist = kreciprocal.jaccard_pairs(encoding)
    dist = dist.astype(np.float32)
    close = dist < 1.0
    return _symmetric(lo[close], hi[close], dist[close], n)


def jaccard_dense(features: np.ndarray, indices: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """The full N x N Jaccard distance matrix: :func:`jaccard_graph` with 1 elsewhere."""
    graph = jaccard_graph(features, indices, k1, k2).tocoo()
    out = np.ones(graph.shape, dtype=np.float32)
    out[graph.row, graph.col] = graph.data
    np.fill_diagonal(out, 0.0)
    return out


def _rows(features: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Feature rows of ``images`` as float32 (``features`` may be stored as float16)."""
    return np.asarray(features[images], dtype=np.float32)


def _symmetric(lo: np.ndarray, hi: np.ndarray, values: np.ndarray, n: int) -> sparse.csr_array:
    """Symmetric CSR matrix with ``values`` at (lo, hi) and (hi, lo); zeros stay stored."""
    graph = sparse.csr_array(
        (np.concatenate([values, values]), (np.concatenate([lo, hi]), np.concatenate([hi, lo]))),
        shape=(n, n),
    )
    graph.sort_indices()
    return graph
