"""Cluster-quality diagnostics against ground-truth identities (paper Fig. 4); never used by
training, only by summaries and the report.

Rows with an unknown identity (pid < 0) are left out first. Over the remaining rows:

- **pairwise precision**: of the pairs of images placed in the same cluster, the fraction with
  the same identity; **recall**: of the pairs with the same identity, the fraction placed in the
  same cluster; **F-score** their harmonic mean. Outliers (label -1) are singletons: they form
  no pair, so discarding an image can raise precision but only lower recall.
- **expansion**: the mean, over identities with at least one clustered image, of the number of
  distinct clusters (label >= 0) holding that identity's images. Outliers are not counted as
  clusters (a discarded image does not split its identity further), so discarding the
  impurities of other identities' clusters lowers it, as in Fig. 4.
- ``n_clusters`` (distinct labels >= 0) and ``n_outliers`` (rows labelled -1).

A ratio with nothing to count (no predicted pair, no same-identity pair) is NaN.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ClusterQuality:
    precision: float
    recall: float
    fscore: float
    expansion: float
    n_clusters: int
    n_outliers: int
    n_images: int

    def as_dict(self) -> dict:
        return asdict(self)


def cluster_quality(labels: np.ndarray, pids: np.ndarray) -> ClusterQuality:
    """Quality of predicted ``labels`` (-1 = outlier) against identities ``pids`` (-1 unknown)."""
    labels = np.asarray(labels, dtype=np.int64)
    pids = np.asarray(pids, dtype=np.int64)
    known = pids >= 0
    labels, pids = labels[known], pids[known]
    clustered = labels >= 0
    pid_ids = np.unique(pids, return_inverse=True)[1]
    n_pids = int(pid_ids.max()) + 1 if len(pid_ids) else 0
    cells, cell_sizes = np.unique(
        labels[clustered] * n_pids + pid_ids[clustered], return_counts=True
    )
    cell_pids = cells % max(n_pids, 1)
    same_both = _pairs(cell_sizes)
    same_cluster = _pairs(np.bincount(labels[clustered]))
    same_identity = _pairs(np.bincount(pid_ids))
    precision = _ratio(same_both, same_cluster)
    recall = _ratio(same_both, same_identity)
    fscore = (
        2 * precision * recall / (precision + recall) if precision + recall > 0 else float("nan")
    )
    per_identity = np.bincount(cell_pids, minlength=n_pids)
    touched = per_identity[per_identity > 0]
    return ClusterQuality(
        precision=precision,
        recall=recall,
        fscore=float(fscore),
        expansion=float(touched.mean()) if len(touched) else float("nan"),
        n_clusters=int(len(np.unique(labels[clustered]))),
        n_outliers=int((~clustered).sum()),
        n_images=int(len(labels)),
    )


def discard_ratio(global_clusters: np.ndarray, discarded: np.ndarray) -> float:
    """Discarded images over images in a global cluster (Fig. 6's ratio); NaN when none are."""
    return _ratio(int(np.sum(discarded)), int(np.sum(np.asarray(global_clusters) >= 0)))


def _pairs(counts: np.ndarray) -> int:
    counts = np.asarray(counts, dtype=np.int64)
    return int((counts * (counts - 1) // 2).sum())


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")
