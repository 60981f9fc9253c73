"""Camera-aware label refinement with pivots and local labels (paper Eq. 5).

For a global cluster ``G_k`` and a camera ``c``, ``G_k^c`` are its members seen by camera ``c``.
A pivot in ``G_k^c`` vouches for the members of ``G_k^c`` that share its local (intra-camera)
cluster ``L_i``; with discard probability ``p = 1`` the refined cluster is

    G_refine = (G_k^c  intersected with  L_i)  union  (G_k \\ G_k^c)                     (5)

and with ``p < 1`` each member of ``G_k^c`` outside ``L_i`` is discarded (label -1, left out of
this epoch's training) independently with probability ``p``.

Decisions the paper leaves open (``mode="paper"``):

- **Several pivots in one (cluster, camera) that disagree** (different local clusters): a
  member is kept if it shares a local cluster with *any* of them (the union of their local
  clusters is vouched for); only members no pivot vouches for are discard candidates.
- **A (cluster, camera) without a pivot**, and so a cluster without any pivot: unchanged, since
  there is no evidence against its members.
- Pivots are always kept (each vouches for itself), so no cluster disappears.

``mode="reference"`` reproduces the released code (``inter_camera_training.py`` and
``cluster_by_infomap(node_flag=1)``): one pivot per cluster, the *last* member in row order whose
score exceeds the mean score (its loop overwrites the choice, so it is not the highest-scoring
one), and only that pivot's camera is refined; the caller keeps ``p`` fixed (the released code
uses 1). Both modes then apply the same rule, so they differ only in which pivots count.

Vectorised: (cluster, camera) groups and (cluster, local cluster) pairs become integer keys,
membership is ``np.isin`` on sorted keys; no loop over images or clusters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.cluster.knn import knn
from pipeline.cluster.labels import renumber
from pipeline.cluster.pivots import mean_pairwise_distance, pivot_scores, select_pivots

MODES = ("paper", "reference")


@dataclass(frozen=True)
class Refinement:
    """One epoch's refinement: labels (-1 = outlier or discarded), masks and Eq. 4's mean."""

    labels: np.ndarray
    discarded: np.ndarray
    pivots: np.ndarray
    mean_distance: float


def refine_epoch(
    features: np.ndarray,
    global_clusters: np.ndarray,
    camids: np.ndarray,
    local_labels: np.ndarray,
    discard_probability: float,
    rng: np.random.Generator,
    mode: str = "paper",
    pivot_k: int = 15,
    knn_method: str = "exact",
    similarities: np.ndarray | None = None,
) -> Refinement:
    """Pivots (Eq. 4) on the current L2-normalised ``features``, then :func:`refine_labels`.

    ``similarities`` (N x ``pivot_k``), the neighbour similarities of these features when the
    global clustering has already searched them; else they are searched here."""
    if similarities is None:
        similarities, _ = knn(features, pivot_k, knn_method)
    mean_distance = mean_pairwise_distance(features)
    pivots = select_pivots(pivot_scores(similarities, mean_distance), global_clusters)
    labels, discarded = refine_labels(
        global_clusters, camids, local_labels, pivots, discard_probability, rng, mode
    )
    return Refinement(labels, discarded, pivots, mean_distance)


def refine_labels(
    global_clusters: np.ndarray,
    camids: np.ndarray,
    local_labels: np.ndarray,
    is_pivot: np.ndarray,
    discard_probability: float,
    rng: np.random.Generator,
    mode: str = "paper",
) -> tuple[np.ndarray, np.ndarray]:
    """Refined labels (Eq. 5) and the mask of discarded samples.

    ``local_labels`` are the intra-camera cluster ids, unique within a camera only (they are
    combined with ``camids`` here) and >= 0 for every clustered row. ``is_pivot`` comes from
    :func:`pipeline.cluster.pivots.select_pivots`. One uniform number is drawn per row from
    ``rng``, so a seed gives the same result whatever the clusters. The refined labels keep -1
    for outliers and discarded rows and are renumbered 0..K-1 in the order of the global
    clusters (a label equals its cluster id when no cluster vanished).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not 0.0 <= discard_probability <= 1.0:
        raise ValueError(f"discard probability must lie in [0, 1], got {discard_probability}")
    clusters = np.asarray(global_clusters, dtype=np.int64)
    local_labels = np.asarray(local_labels, dtype=np.int64)
    clustered = clusters >= 0
    if (local_labels[clustered] < 0).any():
        raise ValueError("every clustered row needs a local label >= 0")
    pivots = np.asarray(is_pivot, dtype=bool) & clustered
    if mode == "reference":
        pivots = _last_pivot_per_cluster(clusters, pivots)
    cams = np.unique(camids, return_inverse=True)[1].astype(np.int64)
    local = np.unique(cams * (int(local_labels.max()) + 1) + local_labels, return_inverse=True)[
        1
    ].astype(np.int64)
    group = clusters * (int(cams.max()) + 1) + cams
    vouch = clusters * (int(local.max()) + 1) + local
    refined_group = clustered & np.isin(group, group[pivots])
    candidates = refined_group & ~np.isin(vouch, vouch[pivots])
    discarded = candidates & (rng.random(len(clusters)) < discard_probability)
    return renumber(np.where(discarded, -1, clusters)), discarded


def _last_pivot_per_cluster(clusters: np.ndarray, pivots: np.ndarray) -> np.ndarray:
    """Keep, in each cluster, only its pivot with the largest row number."""
    rows = np.flatnonzero(pivots)
    order = np.lexsort((-rows, clusters[rows]))
    rows = rows[order]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = clusters[rows[1:]] != clusters[rows[:-1]]
    out = np.zeros_like(pivots)
    out[rows[first]] = True
    return out
