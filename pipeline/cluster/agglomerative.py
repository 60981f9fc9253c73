"""Intra-camera agglomerative clustering with average linkage (paper Sec. III-B, stage 1).

Each camera's images are clustered into ``images // ratio`` local clusters (the paper: ratio 5),
with average linkage on a cosine or k-reciprocal Jaccard distance (the released code: Jaccard,
k1=15, k2=4). Two formulations:

**Dense** (N up to ``sparse_threshold``): the N x N distance matrix and scikit-learn's
``AgglomerativeClustering(metric="precomputed", linkage="average")``, as the released code.

**Sparse** (larger cameras; a dense matrix would take 111 GB for a 167k-image camera): average
linkage constrained to a graph, computed by :func:`graph_average_linkage`. The graph holds the
pairs that carry information: for cosine, the symmetrised kNN graph; for Jaccard, every pair with
a distance below 1 (:func:`pipeline.cluster.jaccard.jaccard_graph`). Every pair *outside* the
graph is taken to have similarity 0 (distance 1), so the linkage between clusters A and B is

    d(A, B) = 1 - W(A, B),   W(A, B) = sum of similarities (1 - d) on graph edges between A and B
                                        / (|A| |B|)

which is exactly average linkage (UPGMA) on the matrix whose missing entries are 1. For Jaccard
that is the dense matrix itself (pairs sharing nothing are at distance exactly 1), so with exact
neighbour search the sparse and dense results are identical. For cosine it treats
non-neighbours as orthogonal: the two agree on well-separated data and closely otherwise (the
tests check both). Edges with similarity <= 0 are dropped, since they carry no more than a
missing edge.

The merges run as *reciprocal agglomerative clustering* (RAC; Sumengen et al., 2021): in each
round every cluster finds its best neighbour and all mutual-best pairs merge at once, vectorised
over the edge list (sorting and ``np.unique``, no loop over images). Average linkage is
reducible, so RAC produces exactly the merges of sequential agglomerative clustering; the
first ``N - n_clusters`` of them in order of decreasing ``W`` are applied, which is where
sequential clustering stops. Rounds stop as soon as those merges are known for certain (every
later merge has ``W`` at most the largest edge still left).

**Disconnected graph**: merges only happen along edges, so each connected component ends as at
least one cluster. When the graph has more components than ``n_clusters`` the result has as
many clusters as components (``n_clusters`` is adjusted up, with a warning), rather than joining
unrelated components at distance 1 in arbitrary order. With ``k`` neighbours per image every
component has more than ``k`` images, so this needs ``ratio > k + 1``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from pipeline.cluster.jaccard import jaccard_dense, jaccard_graph
from pipeline.cluster.knn import METHODS, knn
from pipeline.cluster.labels import renumber
from pipeline.errors import PipelineError
from pipeline.settings import setting

log = logging.getLogger(__name__)

DISTANCES = ("cosine", "jaccard")


@dataclass(frozen=True)
class LocalClustering:
    """How each camera's images are clustered into local labels (paper Sec. III-B)."""

    ratio: int = setting(
        5, "local clusters per camera = the camera's training images // ratio (paper: 5)", minimum=1
    )
    distance: str = setting(
        "jaccard",
        "average-linkage distance: cosine, or the k-reciprocal Jaccard distance (k1, k2) of the "
        "released code",
        choices=DISTANCES,
    )
    k: int = setting(20, "neighbours per image of the sparse cosine graph", minimum=1)
    k1: int = setting(15, "k-reciprocal Jaccard distance: k1", minimum=2)
    k2: int = setting(4, "k-reciprocal Jaccard distance: query expansion k2", minimum=1)
    sparse_threshold: int = setting(
        5000,
        "cameras with more images than this are clustered on a kNN graph instead of the full "
        "distance matrix (the same clustering, see pipeline/cluster/agglomerative.py)",
        minimum=1,
    )
    knn: str = setting("exact", "neighbour search of the sparse formulation", choices=METHODS)


def camera_local_labels(features: np.ndarray, options: LocalClustering, camera: int) -> np.ndarray:
    """Local labels 0..K-1 of one camera's L2-normalised embeddings, K = images // ratio; a
    camera too small for two clusters is an error naming it."""
    return intra_camera_clusters(
        features,
        n_local_clusters(len(features), options.ratio, camera),
        options.distance,
        k=options.k,
        k1=options.k1,
        k2=options.k2,
        sparse_threshold=options.sparse_threshold,
        knn_method=options.knn,
    )


def n_local_clusters(n_images: int, ratio: int, camera: int) -> int:
    """Local clusters for a camera with ``n_images`` images: ``n_images // ratio`` (at least 2).

    A camera with fewer than ``2 * ratio`` images cannot be split into two clusters of the
    requested size: that is an error naming the camera.
    """
    if ratio < 1:
        raise PipelineError(f"--ratio must be at least 1, got {ratio}")
    if n_images < 2 * ratio:
        raise PipelineError(
            f"camera {camera}: {n_images} image(s), fewer than 2 x ratio = {2 * ratio} needed "
            f"for {max(n_images // ratio, 1)} < 2 clusters; lower --ratio or leave the camera "
            "out of the dataset"
        )
    return n_images // ratio


def intra_camera_clusters(
    features: np.ndarray,
    n_clusters: int,
    distance: str = "cosine",
    *,
    k: int = 20,
    k1: int = 15,
    k2: int = 4,
    sparse_threshold: int = 5000,
    knn_method: str = "exact",
) -> np.ndarray:
    """Local labels (0..n_clusters-1) of one camera's L2-normalised ``features``.

    Dense for at most ``sparse_threshold`` images, sparse above (module docstring). ``k`` is the
    number of neighbours of the cosine kNN graph; ``k1`` and ``k2`` are the k-reciprocal
    Jaccard parameters; ``knn_method`` is passed to :func:`pipeline.cluster.knn.knn`.
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    n = len(features)
    if not 1 <= n_clusters <= n:
        raise ValueError(f"cannot make {n_clusters} clusters of {n} images")
    neighbours = max(k1, k2) - 1 if distance == "jaccard" else k
    if n <= sparse_threshold:
        if distance == "cosine":
            x = np.asarray(features, dtype=np.float64)
            dist = np.clip(1.0 - x @ x.T, 0.0, None)
            np.fill_diagonal(dist, 0.0)
        else:
            dist = jaccard_dense(features, knn(features, neighbours)[1], k1, k2)
        return dense_average_linkage(dist, n_clusters)
    sims, idx = knn(features, neighbours, knn_method)
    if distance == "cosine":
        rows = np.repeat(np.arange(n), idx.shape[1])
        return graph_average_linkage(n, rows, idx.ravel(), sims.ravel(), n_clusters)
    graph = jaccard_graph(features, idx, k1, k2).tocoo()
    return graph_average_linkage(n, graph.row, graph.col, 1.0 - graph.data, n_clusters)


def local_labels_per_camera(
    features: np.ndarray, camids: np.ndarray, ratio: int = 5, **options
) -> np.ndarray:
    """Local labels of every row, each camera clustered on its own (what one
    ``pipeline cluster-intra`` run per camera computes); ``options`` go to
    :func:`intra_camera_clusters`. Labels are unique within a camera only.
    """
    camids = np.asarray(camids)
    labels = np.full(len(camids), -1, dtype=np.int64)
    for camera in np.unique(camids):
        rows = np.flatnonzero(camids == camera)
        n_clusters = n_local_clusters(len(rows), ratio, int(camera))
        labels[rows] = intra_camera_clusters(features[rows], n_clusters, **options)
    return labels


def dense_average_linkage(distances: np.ndarray, n_clusters: int) -> np.ndarray:
    """Average-linkage labels from a full N x N distance matrix (scikit-learn)."""
    from sklearn.cluster import AgglomerativeClustering

    model = AgglomerativeClustering(n_clusters=n_clusters, metric="precomputed", linkage="average")
    return renumber(model.fit_predict(distances))


def graph_average_linkage(
    n: int,
    rows: np.ndarray,
    cols: np.ndarray,
    similarities: np.ndarray,
    n_clusters: int,
) -> np.ndarray:
    """Average linkage on a sparse similarity graph (missing pairs = similarity 0), by RAC.

    ``(rows[e], cols[e], similarities[e])`` are undirected edges over nodes ``0..n-1``; an edge
    may appear in both directions (it counts once) and self-loops and edges with similarity
    <= 0 are ignored. Returns labels 0..K-1 with ``K = max(n_clusters, components)`` (module
    docstring). Ties between equal linkages are broken by node number, deterministically.
    """
    lo = np.minimum(rows, cols).astype(np.int64)
    hi = np.maximum(rows, cols).astype(np.int64)
    keep = (lo != hi) & (lo >= 0) & (np.asarray(similarities) > 0)
    keys, first = np.unique((lo * n + hi)[keep], return_index=True)
    a, b = keys // n, keys % n
    wsum = np.asarray(similarities, dtype=np.float64)[keep][first]
    size = np.ones(n, dtype=np.float64)
    wanted = n - n_clusters
    merged_a, merged_b, merged_round = ([np.empty(0, dtype=np.int64)] for _ in range(3))
    merged_w = [np.empty(0)]
    certain = 0
    round_no = 0
    while len(a) and certain < wanted:
        w = wsum / (size[a] * size[b])
        u, v, best_w = _mutual_best(n, a, b, w)
        merged_a.append(u)
        merged_b.append(v)
        merged_w.append(best_w)
        merged_round.append(np.full(len(u), round_no))
        size[u] += size[v]
        a, b, wsum = _contract(n, a, b, wsum, u, v)
        round_no += 1
        remaining_max = (wsum / (size[a] * size[b])).max() if len(a) else -np.inf
        certain = int((np.concatenate(merged_w) > remaining_max).sum())
    all_w = np.concatenate(merged_w)
    order = np.lexsort((np.concatenate(merged_round), -all_w))[:wanted]
    if len(order) < wanted:
        log.warning(
            "the similarity graph has %d connected components, more than the %d clusters "
            "requested: returning one cluster or more per component",
            n - len(order),
            n_clusters,
        )
    ua = np.concatenate(merged_a)[order]
    ub = np.concatenate(merged_b)[order]
    forest = sparse.coo_array((np.ones(len(order)), (ua, ub)), shape=(n, n))
    return renumber(connected_components(forest, directed=False)[1])


def _mutual_best(
    n: int, a: np.ndarray, b: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of clusters that are each other's best neighbour (highest ``w``, then lowest id)."""
    src = np.concatenate([a, b])
    dst = np.concatenate([b, a])
    weight = np.concatenate([w, w])
    order = np.lexsort((dst, -weight, src))
    src, dst, weight = src[order], dst[order], weight[order]
    first = np.ones(len(src), dtype=bool)
    first[1:] = src[1:] != src[:-1]
    best = np.full(n, -1, dtype=np.int64)
    best[src[first]] = dst[first]
    u, v, best_w = src[first], dst[first], weight[first]
    mutual = (best[v] == u) & (u < v)
    return u[mutual], v[mutual], best_w[mutual]


def _contract(
    n: int,
    a: np.ndarray,
    b: np.ndarray,
    wsum: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edge list after merging each cluster ``v`` into ``u``: parallel edges summed, loops gone."""
    rep = np.arange(n, dtype=np.int64)
    rep[v] = u
    a2, b2 = rep[a], rep[b]
    keep = a2 != b2
    lo = np.minimum(a2, b2)[keep]
    hi = np.maximum(a2, b2)[keep]
    keys, inverse = np.unique(lo * n + hi, return_inverse=True)
    return keys // n, keys % n, np.bincount(inverse, weights=wsum[keep])
