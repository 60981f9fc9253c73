"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), sparse and in blocks.

The published implementation holds several dense (Q+G) x (Q+G) matrices (distances, their full
argsort, the k-reciprocal features V and their query-expanded copy); for MSMT17's 93,820 test
images each one takes 35 GB in float32. Here every step works on a block of rows or on sparse
matrices with a few dozen to a few hundred nonzeros per row:

1. one pass over the (Q+G) x (Q+G) distances, a block of rows at a time, keeps each image's
   nearest neighbours (its initial ranking, the image itself included) and its largest
   distance, by which its row of original distances is divided (as in the published code);
2. the k-reciprocal features V over the ranking, with local query expansion over the ``k2``
   nearest images, come from :mod:`pipeline.cluster.kreciprocal` (the encoder that the Jaccard
   clustering distance also uses), in float64 with the kernel on the divided distances;
3. Jaccard distances 1 - sum(min(V_q, V_g)) / sum(max(V_q, V_g)) are computed only between
   queries and gallery images, a block of queries at a time, from the nonzeros of V
   (:func:`pipeline.cluster.kreciprocal.jaccard_block`); the final distance
   (1 - lambda) d_Jaccard + lambda d is yielded per block, ready for
   :func:`pipeline.evaluate.metrics.evaluate_retrieval`.

Distances are ``2 - 2 x . y``, the squared Euclidean distance of L2-normalised embeddings.
Neighbour lists are ordered by distance, ties by image order (queries first, then gallery). The
published code ranks the row-normalised distances instead; the order only differs where
rounding after the division makes two distances equal.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import numpy as np
from scipy import sparse

from pipeline.cluster import kreciprocal
from pipeline.evaluate.metrics import rows_per_block


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
    """Steps 1-3 of the module docstring; the first two run when the first block is asked for."""
    num_images = len(query) + len(gallery)
    ranking, row_max = _nearest_neighbours(query, gallery, min(max(k1 + 1, k2), num_images), rows)
    rows_of = partial(_take, query, gallery)

    def divided_distances(first: np.ndarray, second: np.ndarray) -> np.ndarray:
        return kreciprocal.pair_distances(rows_of, query.shape[1], first, second) / row_max[first]

    encoding = kreciprocal.encode(ranking, k1, divided_distances)
    encoding = kreciprocal.local_query_expansion(encoding, ranking, k2)
    yield from _final_distance_blocks(query, gallery, encoding, row_max, lambda_value, rows)


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


def _final_distance_blocks(
    query: np.ndarray,
    gallery: np.ndarray,
    encoding: sparse.csr_array,
    row_max: np.ndarray,
    lambda_value: float,
    rows: int,
) -> Iterator[np.ndarray]:
    """(1 - lambda) Jaccard + lambda original distance, one block of query rows at a time."""
    num_query = len(query)
    gallery_encoding = encoding[num_query:].tocsc()  # by column, as jaccard_block wants
    gallery_t = gallery.T
    for start in range(0, num_query, rows):
        stop = min(start + rows, num_query)
        jaccard = kreciprocal.jaccard_block(encoding[start:stop], gallery_encoding)
        original = 2 - 2 * (query[start:stop] @ gallery_t).astype(np.float64)
        original /= row_max[start:stop, None]
        yield ((1 - lambda_value) * jaccard + lambda_value * original).astype(np.float32)
