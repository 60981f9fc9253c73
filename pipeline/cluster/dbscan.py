"""Global clustering with DBSCAN on the k-reciprocal Jaccard distance (ClusterContrast's choice).

The alternative to Infomap: DBSCAN (``eps`` 0.6, ``min_samples`` 4 as ClusterContrast) with
``metric="precomputed"`` on the sparse matrix of
:func:`pipeline.cluster.jaccard.jaccard_graph`, which stores every pair at distance below 1.
Since ``eps < 1``, DBSCAN sees exactly the neighbourhoods it would see in the dense matrix, in
memory linear in N. Noise points are outliers (-1); labels are renumbered 0..K-1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.cluster.jaccard import jaccard_graph
from pipeline.cluster.labels import renumber
from pipeline.settings import setting


@dataclass(frozen=True)
class DbscanOptions:
    """DBSCAN on the k-reciprocal Jaccard distance, ClusterContrast's global clustering."""

    eps: float = setting(
        0.6,
        "neighbourhood radius (the sparse graph needs eps < 1)",
        exclusive_minimum=0,
        exclusive_maximum=1,
    )
    min_samples: int = setting(4, "neighbours that make a core point", minimum=1)
    k1: int = setting(30, "k-reciprocal Jaccard distance: k1", minimum=2)
    k2: int = setting(6, "k-reciprocal Jaccard distance: query expansion k2", minimum=1)


def dbscan_clusters(
    features: np.ndarray,
    indices: np.ndarray,
    k1: int = 30,
    k2: int = 6,
    eps: float = 0.6,
    min_samples: int = 4,
) -> np.ndarray:
    """Global cluster labels (-1 = noise) of L2-normalised ``features``.

    ``indices`` are kNN lists without self with at least ``max(k1, k2) - 1`` columns.
    """
    from sklearn.cluster import DBSCAN

    if not 0 < eps < 1:
        raise ValueError(f"eps must lie in (0, 1) for the sparse Jaccard graph, got {eps}")
    graph = jaccard_graph(features, indices, k1, k2)
    model = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed")
    return renumber(model.fit_predict(graph))
