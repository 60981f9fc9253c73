"""k-reciprocal encoding and Jaccard distance (Zhong et al., "Re-ranking Person
Re-identification with k-reciprocal Encoding", CVPR 2017), sparse: nothing is N x N.

The one implementation behind the Jaccard distance of clustering
(:mod:`pipeline.cluster.jaccard`: DBSCAN and the intra-camera linkage) and the re-ranking of
evaluation (:mod:`pipeline.evaluate.rerank`). Its inputs are each image's *ranking*, the
indices of its nearest images, nearest first and the image itself included (``-1`` =
missing), and a function giving the distance ``d(i, j)`` of any pairs of images. With
``R(i, k)`` the k-reciprocal set, the images among the first ``k + 1`` entries of ``i``'s
ranking whose own first ``k + 1`` entries include ``i`` (fewer entries where the ranking is
narrower):

1. expansion (:func:`encode`): ``R*(i)`` is ``R(i, k1)`` joined by ``R(c, round(k1 / 2))`` for
   every ``c`` in ``R(i, k1)`` that has more than two thirds of its members in ``R(i, k1)``;
2. encoding (:func:`encode`): ``V[i, j] = exp(-d(i, j))`` for ``j`` in ``R*(i)`` (a Gaussian
   kernel of the distance), each row normalised to sum to one (ClusterContrast's softmax without
   its shift by the row's largest term, a guard against overflow not needed here: ``d`` lies in
   [0, 4]);
3. local query expansion (:func:`local_query_expansion`): row ``i`` of ``V`` becomes the mean
   of the rows of the first ``k2`` entries of ``i``'s ranking;
4. Jaccard distance (:func:`jaccard_pairs`, :func:`jaccard_block`):
   ``d_J(i, j) = 1 - sum_k min(V[i, k], V[j, k]) / sum_k max(V[i, k], V[j, k])``, which is
   ``1 - m / (2 - m)`` with ``m`` the sum of minima since every row sums to one; clipped at 0.

Steps 1-3 are sparse matrix products over the rankings. Step 4 visits, for each row ``i``, the
nonzeros ``V[i, k]`` and, through a column-major copy of ``V``, every row ``j`` with a nonzero in
column ``k``: exactly the pairs with ``m > 0``. Every other pair is at distance exactly 1.

The callers differ only in what they pass. Clustering (ClusterContrast's
``compute_jaccard_distance``): rankings of ``k1`` entries, the image itself then its
:func:`pipeline.cluster.knn.knn` neighbours, ``d = 2 - 2 cos`` with float32 dot products, and V in
float32. Re-ranking (the published re-ranking code): rankings by distance with ties by image
order, each image's distances divided by its largest one, float64 throughout.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import sparse

PAIR_BLOCK_BYTES = 128 * 2**20  # working memory for the feature rows of a block of pairs
SHARED_BLOCK = 2**22  # (row, row, column) triples per block when comparing encodings

PairDistances = Callable[[np.ndarray, np.ndarray], np.ndarray]


def encode(
    ranking: np.ndarray, k1: int, distances: PairDistances, dtype: type = np.float64
) -> sparse.csr_array:
    """The N x N sparse encoding ``V`` of steps 1 and 2 (module docstring); rows sum to one.

    ``ranking`` is N x L (L >= 1, entry ``-1`` = missing). ``distances(first, second)``
    returns ``d(first[p], second[p])`` for each p as float64. ``V`` is stored as ``dtype``,
    with sorted column indices.
    """
    n = len(ranking)
    reciprocal = _reciprocal_sets(ranking[:, : k1 + 1])
    half = _reciprocal_sets(ranking[:, : int(np.around(k1 / 2)) + 1])
    # overlap[i, c] = |R(i, k1) & R(c, k1 / 2)| for the candidates c in R(i, k1)
    overlap = (reciprocal @ half.T).multiply(reciprocal).tocoo()
    accepted = 3 * overlap.data > 2 * np.diff(half.indptr)[overlap.col]
    joined = sparse.csr_array(
        (
            np.ones(int(accepted.sum()), dtype=np.float32),
            (overlap.row[accepted], overlap.col[accepted]),
        ),
        shape=(n, n),
    )
    expanded = (reciprocal + joined @ half).tocsr()
    expanded.sum_duplicates()
    image = np.repeat(np.arange(n), np.diff(expanded.indptr))
    weight = np.exp(-distances(image, expanded.indices))
    weight /= np.bincount(image, weights=weight, minlength=n)[image]
    return sparse.csr_array((weight.astype(dtype), expanded.indices, expanded.indptr), shape=(n, n))


def local_query_expansion(
    encoding: sparse.csr_array, ranking: np.ndarray, k2: int
) -> sparse.csr_array:
    """Step 3: each row of ``V`` replaced by the mean of the rows of its first ``k2`` entries.

    Missing entries (``-1``) are left out of the mean; ``k2 = 1`` leaves ``V`` as it is (as the
    published code does). The result keeps ``V``'s dtype, with sorted column indices.
    """
    if k2 == 1:
        return encoding
    lists = ranking[:, :k2]
    n = len(lists)
    listed = lists >= 0
    counts = listed.sum(axis=1)
    image = np.repeat(np.arange(n), counts)
    average = sparse.csr_array(
        ((1.0 / counts[image]).astype(encoding.dtype), (image, lists[listed])), shape=(n, n)
    )
    expanded = (average @ encoding).tocsr()
    expanded.sort_indices()
    return expanded


def jaccard_pairs(encoding: sparse.csr_array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 4 for every pair ``lo < hi`` whose rows of ``V`` share a column.

    Returns ``(lo, hi, distance)``, sorted by ``(lo, hi)``, distances in float64. Every pair
    left out is at distance 1. Works ``SHARED_BLOCK`` compared entries at a time.
    """
    n = encoding.shape[0]
    by_column = encoding.tocsc()
    # before[i]: entries compared for the rows before row i
    compared = np.diff(by_column.indptr)[encoding.indices]
    before = np.concatenate([[0], np.cumsum(compared)])[encoding.indptr]
    lo, hi, distance = [np.empty(0, np.int64)], [np.empty(0, np.int64)], [np.empty(0)]
    start = 0
    while start < n:
        last = np.searchsorted(before, before[start] + SHARED_BLOCK, side="right") - 1
        stop = max(start + 1, int(last))
        row, other, minimum = _shared_minima(encoding[start:stop], by_column)
        row += start
        upper = other > row
        cells, position = np.unique(row[upper] * n + other[upper], return_inverse=True)
        lo.append(cells // n)
        hi.append(cells % n)
        distance.append(_jaccard(np.bincount(position, weights=minimum[upper])))
        start = stop
    return np.concatenate(lo), np.concatenate(hi), np.concatenate(distance)


def jaccard_block(rows: sparse.csr_array, others: sparse.csc_array) -> np.ndarray:
    """Step 4 between every row of ``rows`` and every row of ``others``, a dense float64 block.

    ``rows`` (B x N) and ``others`` (M x N, column-major) are rows of ``V``; the block is B x M.
    """
    row, other, minimum = _shared_minima(rows, others)
    num_others = others.shape[0]
    shared = np.bincount(
        row * num_others + other, weights=minimum, minlength=rows.shape[0] * num_others
    )
    return _jaccard(shared).reshape(rows.shape[0], num_others)


def pair_distances(
    rows_of: Callable[[np.ndarray], np.ndarray],
    dim: int,
    first: np.ndarray,
    second: np.ndarray,
    dtype: type = np.float64,
) -> np.ndarray:
    """``2 - 2 x . y`` (float64) for each pair of feature rows (``first[p]``, ``second[p]``).

    ``rows_of(images)`` returns the float32 feature rows of ``images`` (``dim`` wide); the dot
    products are accumulated in ``dtype``, ``PAIR_BLOCK_BYTES`` of gathered rows at a time.
    """
    pairs = max(1, PAIR_BLOCK_BYTES // (8 * dim))
    out = np.empty(len(first), dtype=np.float64)
    for start in range(0, len(first), pairs):
        dots = np.einsum(
            "pd,pd->p",
            rows_of(first[start : start + pairs]),
            rows_of(second[start : start + pairs]),
            dtype=dtype,
        )
        out[start : start + pairs] = 2.0 - 2.0 * dots.astype(np.float64)
    return out


def _shared_minima(
    rows: sparse.csr_array, others: sparse.csc_array
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(row, other, min(rows[row, k], others[other, k]))`` for every column ``k`` both hold.

    Ordered by row, then by the row's columns in storage order, then by ``other``.
    """
    column = rows.indices
    count = np.diff(others.indptr)[column]
    total = int(count.sum())
    position = np.repeat(others.indptr[column] - (np.cumsum(count) - count), count)
    position += np.arange(total)
    row = np.repeat(np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr)), count)
    minimum = np.minimum(np.repeat(rows.data, count), others.data[position])
    return row, others.indices[position], minimum


def _jaccard(shared: np.ndarray) -> np.ndarray:
    """``1 - m / (2 - m)`` for sums of minima ``m`` of rows summing to one, clipped at 0."""
    shared = shared.astype(np.float64, copy=False)
    return np.maximum(1.0 - shared / (2.0 - shared), 0.0)


def _reciprocal_sets(ranking: np.ndarray) -> sparse.csr_array:
    """0/1 matrix R with R[i, j] = 1 iff j is in row i of ``ranking`` and i in row j."""
    n, width = ranking.shape
    image = np.repeat(np.arange(n), width)
    listed = ranking.ravel()
    keep = listed >= 0
    member = sparse.csr_array(
        (np.ones(int(keep.sum()), dtype=np.float32), (image[keep], listed[keep])), shape=(n, n)
    )
    return member.multiply(member.T).tocsr()
