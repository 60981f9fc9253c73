"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), sparse and in blocks.

The published implementation holds several dense (Q+G) x (Q+G) matrices (distances, their full
argsort, the k-reciprocal features V and their query-expanded copy); for MSMT17's 93,820 test
images each one takes 35 GB in float32. Here every step works on a block of rows or on sparse
matrices with a few dozen to a few hundred nonzeros per row:

1. one pass over the (Q+G) x (Q+G) distances, a block of rows at a time, keeps each image's
   nearest neighbours (its initial ranking) and its largest distance, by which its row of
   original distances is divided (as in the published code);
2. the k-reciprocal neighbour sets R(i, k1) and R(i, k1/2) are sparse 0/1 matrices, the
   elementwise product of the nearest-neighbour graph with its transpose; the expanded set
   R*(i) adds R(c, k1/2) for every c in R(i, k1) that shares more than 2/3 of its members with
   R(i, k1) (sparse products);
3. the k-reciprocal features V (a Gaussian kernel of the original distance over R*(i), each row
   summing to one) form a CSR matrix; local query expansion replaces each row by the mean of
   the rows of the image's k2 nearest neighbours (one sparse product);
4. Jaccard distances 1 - sum(min(V_q, V_g)) / sum(max(V_q, V_g)) are computed only between
   queries and gallery images, a block of queries at a time, from the nonzeros of V; the final
   distance (1 - lambda) d_Jaccard + lambda d is yielded per block, ready for
   :func:`pipeline.evaluate.metrics.evaluate_retrieval`.

Distances are ``2 - 2 x . y``, the squared Euclidean distance of L2-normalised embeddings.
Neighbour lists are ordered by distance, ties by image order (queries first, then gallery). The
published code ranks the row-normalised distances instead; the order only differs where
rounding after the division makes two distances equal.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy import sparse

from pipeline.evaluate.metrics import DEFAULT_BLOCK_BYTES, rows_per_block


def k_reciprocal_distance_blocks(
    query_features: np.ndarray,
    gallery_features: np.ndarray,
    *,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk_size: int | None = None,
) -> Iterator[np.ndarray]:
    """Re-ranked query x gallery distances, yielded as float32 blocks of query rows, in order.

    ``chunk_size`` is the number of rows per block (default: sized from the number of images by
    :func:`pipeline.evaluate.metrics.rows_per_block`). The neighbour search and V are computed
    when the first block is requested.
    """
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be at least 1, got k1={k1}, k2={k2}")
    if not 0 <= lambda_value <= 1:
        raise ValueError(f"lambda_value must lie in [0, 1], got {lambda_value}")
    query = np.asarray(query_features, dtype=np.float32)
    gallery = np.asarray(gallery_features, dtype=np.float32)
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"query and gallery features must be 2-D with equal widths, got {query.shape} "
            f"and {gallery.shape}"
        )
    rows = chunk_size or rows_per_block(len(query) + len(gallery))
    return _blocks(query, gallery, k1, k2, lambda_value, rows)


def _blocks(
    query: np.ndarray, gallery: np.ndarray, k1: int, k2: int, lambda_value: float, rows: int
) -> Iterator[np.ndarray]:
    """Steps 1-4 of the module docstring; the first three run when the first block is asked for."""
    num_images = len(query) + len(gallery)
    neighbours, row_max = _nearest_neighbours(
        query, gallery, min(max(k1 + 1, k2), num_images), rows
    )
    features = _k_reciprocal_features(query, gallery, neighbours, row_max, k1)
    if k2 > 1:
        features = _local_query_expansion(features, neighbours[:, :k2])
    yield from _final_distance_blocks(query, gallery, features, row_max, lambda_value, rows)


def _stacked_rows(query: np.ndarray, gallery: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of the query rows followed by the gallery rows, without stacking all."""
    num_query = len(query)
    return np.concatenate(
        [
            query[start : min(stop, num_query)],
            gallery[max(start - num_query, 0) : max(stop - num_query, 0)],
        ]
    )


def _take(query: np.ndarray, gallery: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Feature rows of the given images (queries first, then gallery)."""
    out = np.empty((len(images), query.shape[1]), dtype=np.float32)
    in_query = images < len(query)
    out[in_query] = query[images[in_query]]
    out[~in_query] = gallery[images[~in_query] - len(query)]
    return out


def _nearest_neighbours(
    query: np.ndarray, gallery: np.ndarray, k: int, rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each image's ``k`` nearest images (ordered, ties by index) and its largest distance."""
    num_query = len(query)
    num_images = num_query + len(gallery)
    neighbours = np.empty((num_images, k), dtype=np.int64)
    row_max = np.empty(num_images, dtype=np.float64)
    for start in range(0, num_images, rows):
        stop = min(start + rows, num_images)
        block = _stacked_rows(query, gallery, start, stop)
        distance = np.empty((stop - start, num_images), dtype=np.float32)
        np.matmul(block, query.T, out=distance[:, :num_query])
        np.matmul(block, gallery.T, out=distance[:, num_query:])
        distance *= -2
        distance += 2
        row_max[start:stop] = distance.max(axis=1)
        neighbours[start:stop] = _smallest(distance, k)
    return neighbours, row_max


def _smallest(distance: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's ``k`` smallest entries, ordered by (distance, column).

    Equal to ``np.argsort(distance, axis=1, kind="stable")[:, :k]`` in linear time per row.
    """
    kth = np.partition(distance, k - 1, axis=1)[:, k - 1 : k]
    below = distance < kth
    tied = distance == kth
    room = k - below.sum(axis=1, keepdims=True)
    chosen = below | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= room))
    columns = np.nonzero(chosen)[1].reshape(len(distance), k)
    order = np.argsort(np.take_along_axis(distance, columns, axis=1), axis=1, kind="stable")
    return np.take_along_axis(columns, order, axis=1)


def _reciprocal_sets(neighbours: np.ndarray) -> sparse.csr_array:
    """0/1 matrix R with R[i, j] = 1 iff j is among i's neighbours and i among j's."""
    num_images, k = neighbours.shape
    graph = sparse.csr_array(
        (np.ones(num_images * k), neighbours.ravel(), np.arange(0, num_images * k + 1, k)),
        shape=(num_images, num_images),
    )
    return graph.multiply(graph.T).tocsr()


def _k_reciprocal_features(
    query: np.ndarray,
    gallery: np.ndarray,
    neighbours: np.ndarray,
    row_max: np.ndarray,
    k1: int,
) -> sparse.csr_array:
    """V: row i holds exp(-d(i, j)) over the expanded set R*(i), normalised to sum to one."""
    num_images = len(neighbours)
    reciprocal = _reciprocal_sets(neighbours[:, : k1 + 1])
    half = _reciprocal_sets(neighbours[:, : int(np.around(k1 / 2)) + 1])
    # overlap[i, c] = |R(i, k1) & R(c, k1/2)| for the candidates c in R(i, k1)
    overlap = (reciprocal @ half.T).multiply(reciprocal).tocoo()
    half_size = np.diff(half.indptr)
    accepted = 3 * overlap.data > 2 * half_size[overlap.col]
    candidates = sparse.csr_array(
        (np.ones(int(accepted.sum())), (overlap.row[accepted], overlap.col[accepted])),
        shape=(num_images, num_images),
    )
    expanded = (reciprocal + candidates @ half).tocsr()

    image = np.repeat(np.arange(num_images), np.diff(expanded.indptr))
    distance = _pair_distances(query, gallery, image, expanded.indices) / row_max[image]
    weight = np.exp(-distance)
    weight /= np.bincount(image, weights=weight, minlength=num_images)[image]
    return sparse.csr_array(
        (weight, expanded.indices, expanded.indptr), shape=(num_images, num_images)
    )


def _pair_distances(
    query: np.ndarray, gallery: np.ndarray, first: np.ndarray, second: np.ndarray
) -> np.ndarray:
    """``2 - 2 x . y`` for each pair of images (``first[p]``, ``second[p]``), in float64."""
    pairs = max(1, DEFAULT_BLOCK_BYTES // (8 * query.shape[1]))
    out = np.empty(len(first), dtype=np.float64)
    for start in range(0, len(first), pairs):
        a = _take(query, gallery, first[start : start + pairs])
        b = _take(query, gallery, second[start : start + pairs])
        out[start : start + pairs] = 2 - 2 * np.einsum("pd,pd->p", a, b, dtype=np.float64)
    return out


def _local_query_expansion(features: sparse.csr_array, neighbours: np.ndarray) -> sparse.csr_array:
    """Replace each row of V by the mean of the rows of the image's k2 nearest neighbours."""
    num_images, k2 = neighbours.shape
    average = sparse.csr_array(
        (
            np.full(num_images * k2, 1 / k2),
            neighbours.ravel(),
            np.arange(0, num_images * k2 + 1, k2),
        ),
        shape=(num_images, num_images),
    )
    return (average @ features).tocsr()


def _final_distance_blocks(
    query: np.ndarray,
    gallery: np.ndarray,
    features: sparse.csr_array,
    row_max: np.ndarray,
    lambda_value: float,
    rows: int,
) -> Iterator[np.ndarray]:
    """(1 - lambda) Jaccard + lambda original distance, one block of query rows at a time."""
    num_query, num_gallery = len(query), len(gallery)
    by_column = features[num_query:].tocsc()  # gallery rows of V, entries grouped by column
    column_start = by_column.indptr[:-1]
    column_count = np.diff(by_column.indptr)
    gallery_t = gallery.T
    for start in range(0, num_query, rows):
        stop = min(start + rows, num_query)
        block = features[start:stop]
        # every (query entry, gallery entry) pair that shares a column of V
        row = np.repeat(np.arange(stop - start), np.diff(block.indptr))
        count = column_count[block.indices]
        first = np.repeat(column_start[block.indices] - (np.cumsum(count) - count), count)
        position = first + np.arange(int(count.sum()))
        shared = np.minimum(np.repeat(block.data, count), by_column.data[position])
        cell = np.repeat(row, count) * num_gallery + by_column.indices[position]
        intersection = np.bincount(
            cell, weights=shared, minlength=(stop - start) * num_gallery
        ).reshape(stop - start, num_gallery)
        jaccard = 1 - intersection / (2 - intersection)
        original = 2 - 2 * (query[start:stop] @ gallery_t).astype(np.float64)
        original /= row_max[start:stop, None]
        yield ((1 - lambda_value) * jaccard + lambda_value * original).astype(np.float32)
