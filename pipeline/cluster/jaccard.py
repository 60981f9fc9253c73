"""k-reciprocal Jaccard distance (Zhong et al., CVPR 2017), sparse: no N x N matrix.

This is the distance of the released CALR code for intra-camera clustering (k1=15, k2=4) and of
ClusterContrast's DBSCAN (k1=30, k2=6), computed as in ClusterContrast's
``compute_jaccard_distance``, whose neighbour lists hold ``k1`` entries *including the query
itself*:

1. ``R(i)``: the k-reciprocal set, rows ``j`` of ``i``'s top-``k1`` list (self first) whose own
   top-``k1`` list contains ``i``; ``R_half(i)`` the same with ``round(k1 / 2) + 1`` entries.
2. Expansion: for each ``c`` in ``R(i)``, ``R_half(c)`` joins ``R(i)`` when more than two thirds
   of it is already in ``R(i)``.
3. Encoding: ``V[i, j] = softmax_j(-(2 - 2 x_i.x_j))`` over the expanded set (rows sum to 1).
4. Query expansion: ``V[i]`` becomes the mean of ``V`` over ``i``'s top-``k2`` list (self
   first).
5. ``d(i, j) = 1 - m / (2 - m)`` with ``m = sum_k min(V[i, k], V[j, k])`` (the Jaccard distance
   of the two encodings, since each row sums to 1), clipped at 0.

Steps 1-4 are sparse matrix products over the neighbour lists. A pair whose encodings share no
column has ``m = 0``, distance exactly 1, so the full matrix is 1 except on the sparsity pattern
of ``V V^T``. :func:`jaccard_graph` computes the distance on exactly that pattern (about a hundred
pairs per row, not N), which is all the sparse clusterers need; :func:`jaccard_dense` spreads it
into the full matrix for small N and for tests.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

PAIR_BLOCK = 200_000  # pairs per block when comparing encodings
DOT_BLOCK_BYTES = 128 * 2**20  # working memory for gathered feature rows


def kreciprocal_encoding(
    features: np.ndarray, indices: np.ndarray, k1: int, k2: int
) -> sparse.csr_array:
    """The N x N sparse encoding ``V`` of steps 1-4 (module docstring); rows sum to 1.

    ``indices`` are kNN lists without self (from :func:`pipeline.cluster.knn.knn`) with at
    least ``max(k1, k2) - 1`` columns; ``-1`` entries (missing neighbours) are ignored.
    """
    if k1 < 2 or k2 < 1:
        raise ValueError(f"need k1 >= 2 and k2 >= 1, got k1={k1}, k2={k2}")
    if indices.shape[1] < max(k1, k2) - 1:
        raise ValueError(
            f"k-reciprocal encoding needs {max(k1, k2) - 1} neighbours per row, "
            f"got {indices.shape[1]}"
        )
    n = len(indices)
    reciprocal = _reciprocal(_top_lists(indices, k1))
    half = _reciprocal(_top_lists(indices, min(int(np.around(k1 / 2)) + 1, k1)))
    half_sizes = np.asarray(half.sum(axis=1)).ravel()
    overlap = (reciprocal @ half.T).multiply(reciprocal).tocoo()
    expand = overlap.data > 2 / 3 * half_sizes[overlap.col]
    chosen = sparse.csr_array(
        (np.ones(expand.sum()), (overlap.row[expand], overlap.col[expand])), shape=(n, n)
    )
    expanded = (reciprocal + chosen @ half).tocsr()
    expanded.sum_duplicates()
    expanded.sort_indices()
    rows = np.repeat(np.arange(n), np.diff(expanded.indptr))
    cols = expanded.indices
    logits = -(2.0 - 2.0 * pair_similarities(features, rows, cols).astype(np.float64))
    row_max = np.maximum.reduceat(logits, expanded.indptr[:-1]) if len(logits) else logits
    weights = np.exp(logits - row_max[rows])
    weights /= np.bincount(rows, weights=weights, minlength=n)[rows]
    encoding = sparse.csr_array(
        (weights.astype(np.float32), cols, expanded.indptr.copy()), shape=(n, n)
    )
    if k2 > 1:
        lists = _top_lists(indices, k2)
        valid = lists >= 0
        counts = valid.sum(axis=1)
        qe_rows = np.repeat(np.arange(n), counts)
        averaging = sparse.csr_array(
            ((1.0 / counts[qe_rows]).astype(np.float32), (qe_rows, lists[valid])), shape=(n, n)
        )
        encoding = (averaging @ encoding).tocsr()
    return encoding


def jaccard_distances(encoding: sparse.csr_array, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Jaccard distance (step 5) between encoding rows ``rows[p]`` and ``cols[p]`` for each p."""
    out = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), PAIR_BLOCK):
        stop = start + PAIR_BLOCK
        shared = encoding[rows[start:stop]].minimum(encoding[cols[start:stop]])
        m = np.asarray(shared.sum(axis=1), dtype=np.float64).ravel()
        out[start:stop] = np.maximum(1.0 - m / (2.0 - m), 0.0)
    return out


def jaccard_graph(features: np.ndarray, indices: np.ndarray, k1: int, k2: int) -> sparse.csr_array:
    """Symmetric sparse matrix of every k-reciprocal Jaccard distance below 1.

    The candidate pairs are the pattern of ``V V^T`` (pairs whose encodings share a column);
    every other pair is at distance exactly 1, so nothing below 1 is lost. Pairs at distance 1
    and the diagonal are left out, and distance-0 pairs are stored as explicit zeros, so a stored
    entry always means "neighbours at this distance" (what DBSCAN with
    ``metric="precomputed"`` and the graph-constrained linkage expect).
    """
    n = len(indices)
    encoding = kreciprocal_encoding(features, indices, k1, k2)
    shared = (encoding @ encoding.T).tocoo()
    lo, hi = _unique_pairs(shared.row, shared.col, n)
    dist = jaccard_distances(encoding, lo, hi)
    close = dist < 1.0
    return _symmetric(lo[close], hi[close], dist[close], n)


def jaccard_dense(features: np.ndarray, indices: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """The full N x N Jaccard distance matrix: :func:`jaccard_graph` with 1 elsewhere."""
    graph = jaccard_graph(features, indices, k1, k2).tocoo()
    out = np.ones(graph.shape, dtype=np.float32)
    out[graph.row, graph.col] = graph.data
    np.fill_diagonal(out, 0.0)
    return out


def pair_similarities(features: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Cosine similarity ``features[rows[p]] . features[cols[p]]`` for each p, in blocks."""
    out = np.empty(len(rows), dtype=np.float32)
    block = max(1, DOT_BLOCK_BYTES // (8 * features.shape[1]))
    for start in range(0, len(rows), block):
        stop = start + block
        a = np.asarray(features[rows[start:stop]], dtype=np.float32)
        b = np.asarray(features[cols[start:stop]], dtype=np.float32)
        out[start:stop] = np.einsum("pd,pd->p", a, b)
    return out


def _top_lists(indices: np.ndarray, length: int) -> np.ndarray:
    """Each row's first ``length`` entries of [self, neighbours...] (``-1`` = missing)."""
    n = len(indices)
    return np.concatenate([np.arange(n)[:, None], indices[:, : length - 1]], axis=1)


def _reciprocal(lists: np.ndarray) -> sparse.csr_array:
    """0/1 matrix R with R[i, j] = 1 iff j is in list i and i is in list j."""
    n = len(lists)
    rows = np.repeat(np.arange(n), lists.shape[1])
    cols = lists.ravel()
    keep = cols >= 0
    member = sparse.csr_array(
        (np.ones(keep.sum(), dtype=np.float32), (rows[keep], cols[keep])), shape=(n, n)
    )
    member.sum_duplicates()
    return member.multiply(member.T).tocsr()


def _unique_pairs(rows: np.ndarray, cols: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct unordered pairs (lo < hi) among (rows, cols), self pairs removed."""
    lo = np.minimum(rows, cols).astype(np.int64)
    hi = np.maximum(rows, cols).astype(np.int64)
    keys = np.unique((lo * n + hi)[lo != hi])
    return keys // n, keys % n


def _symmetric(lo: np.ndarray, hi: np.ndarray, values: np.ndarray, n: int) -> sparse.csr_array:
    """Symmetric CSR matrix with ``values`` at (lo, hi) and (hi, lo); zeros stay stored."""
    graph = sparse.csr_array(
        (np.concatenate([values, values]), (np.concatenate([lo, hi]), np.concatenate([hi, lo]))),
        shape=(n, n),
    )
    graph.sort_indices()
    return graph
