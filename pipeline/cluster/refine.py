"""Camera-aware label refinement with pivots and local labels (paper Eq. 5, Algorithm 1).

For a global cluster ``G_k`` and a camera ``c``, ``G_k^c`` are its members seen by camera ``c``.
A pivot in ``G_k^c`` vouches for the members of ``G_k^c`` that share its local (intra-camera)
cluster ``L_i``; with discard probability ``p = 1`` the refined cluster is

    G_refine = (G_k^c  intersected with  L_i)  union  (G_k \\ G_k^c)                     (5)

and with ``p < 1`` each member of ``G_k^c`` outside ``L_i`` is discarded (label -1, left out of
this epoch's training) independently with probability ``p``.

Algorithm 1 applies Eq. 5 "for i in pivots", and Eq. 4 makes every image scoring above the
mean a pivot, so one (cluster, camera) can hold several pivots in different local clusters. The
paper does not say what happens then; ``mode="paper"`` offers three readings (``pivot_rule``):

- ``any``: a member is kept if it shares a local cluster with *any* pivot of its (cluster,
  camera): the union of the pivots' local clusters is vouched for, and only members no pivot
  vouches for are discard candidates. Pivots are always kept, so no cluster disappears. The
  least aggressive reading.
- ``each``: Eq. 5 applied once for each pivot, every time to the cluster as clustered: a member
  is kept only if *every* pivot of its (cluster, camera) vouches for it. Where the pivots of a
  (cluster, camera) disagree, none of its members is vouched for (the pivots discard each
  other), so all of them, pivots included, are candidates. The most aggressive reading.
- ``best``: only the highest-scoring pivot of each (cluster, camera) vouches (ties: the first
  row); the other pivots are ordinary members. This is Algorithm 1 taken pivot by pivot in
  decreasing score with a discarded pivot no longer refining (at ``p = 1`` every later pivot
  that survives shares the first one's local cluster and changes nothing).

With ``p < 1`` every candidate is discarded once with probability ``p``, under any rule.

In all three a (cluster, camera) without a pivot, and so a cluster without any pivot, is
unchanged: there is no evidence against its members.

``mode="reference"`` reproduces the released code (``inter_camera_training.py`` and
``cluster_by_infomap(node_flag=1)``): one pivot per cluster, the *last* member in row order whose
score exceeds the mean score (its loop overwrites the choice, so it is not the highest-scoring
one), and only that pivot's camera is refined; ``pivot_rule`` is not used, and the caller keeps
``p`` fixed (the released code uses 1). Its pivot scores are the release's too
(:mod:`pipeline.cluster.pivots`).

Vectorised: (cluster, camera) groups and (cluster, local cluster) pairs become integer keys,
membership is ``np.isin`` on sorted keys; no loop over images or clusters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.cluster.knn import knn
from pipeline.cluster.labels import renumber
from pipeline.cluster.pivots import (
    knn_mean_distance,
    mean_pairwise_distance,
    pivot_scores,
    select_pivots,
)

MODES = ("paper", "reference")
PIVOT_RULES = ("any", "each", "best")


@dataclass(frozen=True)
class Refinement:
    """One epoch's refinement: labels (-1 = outlier or discarded), masks and Eq. 4's mean.

    ``pivots``: every image scoring above the mean (:func:`select_pivots`); ``vouching``: those
    of them whose local clusters decided (:func:`vouching_pivots`)."""

    labels: np.ndarray
    discarded: np.ndarray
    pivots: np.ndarray
    mean_distance: float
    vouching: np.ndarray


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
    *,
    pivot_rule: str = "any",
    min_sim: float = 0.5,
) -> Refinement:
    """Pivots (Eq. 4) on the current L2-normalised ``features``, then :func:`refine_labels`.

    ``mode="paper"`` scores each image on its ``pivot_k`` nearest other images, against the
    mean distance over all pairs. ``mode="reference"`` scores as the released code: its
    ``pivot_k`` counts the image itself (``pivot_k - 1`` other images), only neighbours with
    similarity at least ``min_sim`` (the global graph's threshold) count, and the mean distance
    is the one over the kNN lists (:mod:`pipeline.cluster.pivots`).

    ``similarities``: kNN similarities of these features (self excluded) when the global
    clustering has already searched them, with at least as many columns as the mode scores
    (the first are used); else they are searched here. ``pivot_rule``: paper mode's reading of
    several pivots in one (cluster, camera), one of :data:`PIVOT_RULES` (module docstring).
    """
    _check_options(mode, pivot_rule)
    neighbours = pivot_k if mode == "paper" else pivot_k - 1
    if neighbours < 1:
        raise ValueError(f"pivot_k {pivot_k} leaves no neighbour to score in mode {mode!r}")
    if similarities is None:
        similarities, _ = knn(features, neighbours, knn_method)
    elif similarities.shape[1] < neighbours:
        raise ValueError(
            f"mode {mode!r} with pivot_k {pivot_k} scores {neighbours} neighbours per image, "
            f"the given lists hold {similarities.shape[1]}; search more or pass none"
        )
    similarities = similarities[:, :neighbours]
    if mode == "reference":
        mean_distance = knn_mean_distance(similarities)
        scores = pivot_scores(similarities, mean_distance, min_sim)
    else:
        mean_distance = mean_pairwise_distance(features)
        scores = pivot_scores(similarities, mean_distance)
    pivots = select_pivots(scores, global_clusters)
    rule = {"pivot_rule": pivot_rule, "scores": scores}
    labels, discarded = refine_labels(
        global_clusters, camids, local_labels, pivots, discard_probability, rng, mode, **rule
    )
    vouching = vouching_pivots(global_clusters, camids, pivots, mode, **rule)
    return Refinement(labels, discarded, pivots, mean_distance, vouching)


def refine_labels(
    global_clusters: np.ndarray,
    camids: np.ndarray,
    local_labels: np.ndarray,
    is_pivot: np.ndarray,
    discard_probability: float,
    rng: np.random.Generator,
    mode: str = "paper",
    *,
    pivot_rule: str = "any",
    scores: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Refined labels (Eq. 5) and the mask of discarded samples.

    ``local_labels`` are the intra-camera cluster ids, unique within a camera only (they are
    combined with ``camids`` here) and >= 0 for every clustered row. ``is_pivot`` comes from
    :func:`pipeline.cluster.pivots.select_pivots`; of those, :func:`vouching_pivots` decide
    (by ``mode``, ``pivot_rule`` and, for ``best``, the Eq. 4 ``scores`` of every row).
    One uniform number is drawn per row from ``rng``, so a seed gives the same result whatever
    the clusters and the rule. The refined labels keep -1 for outliers and discarded rows and
    are renumbered 0..K-1 in the order of the global clusters (a label equals its cluster id
    when no cluster vanished).
    """
    if not 0.0 <= discard_probability <= 1.0:
        raise ValueError(f"discard probability must lie in [0, 1], got {discard_probability}")
    clusters = np.asarray(global_clusters, dtype=np.int64)
    local_labels = np.asarray(local_labels, dtype=np.int64)
    clustered = clusters >= 0
    if (local_labels[clustered] < 0).any():
        raise ValueError("every clustered row needs a local label >= 0")
    pivots = vouching_pivots(clusters, camids, is_pivot, mode, pivot_rule=pivot_rule, scores=scores)
    cams, group = _camera_groups(clusters, camids)
    local = np.unique(cams * (int(local_labels.max()) + 1) + local_labels, return_inverse=True)[
        1
    ].astype(np.int64)
    vouch = clusters * (int(local.max()) + 1) + local
    unvouched = ~np.isin(vouch, vouch[pivots])
    if mode == "paper" and pivot_rule == "each":
        unvouched |= np.isin(group, _split_groups(group, vouch, pivots))
    candidates = clustered & np.isin(group, group[pivots]) & unvouched
    discarded = candidates & (rng.random(len(clusters)) < discard_probability)
    return renumber(np.where(discarded, -1, clusters)), discarded


def vouching_pivots(
    global_clusters: np.ndarray,
    camids: np.ndarray,
    is_pivot: np.ndarray,
    mode: str = "paper",
    *,
    pivot_rule: str = "any",
    scores: np.ndarray | None = None,
) -> np.ndarray:
    """The pivots whose local clusters decide (module docstring), as a row mask.

    All clustered pivots under ``any`` and ``each``; the highest-scoring one of each (cluster,
    camera) under ``best`` (``scores``, Eq. 4 per row, needed); in ``mode="reference"`` the
    last one of each cluster in row order, whatever ``pivot_rule``.
    """
    _check_options(mode, pivot_rule)
    clusters = np.asarray(global_clusters, dtype=np.int64)
    pivots = np.asarray(is_pivot, dtype=bool) & (clusters >= 0)
    if mode == "reference":
        return _top_pivot_per_key(clusters, pivots, np.arange(len(clusters)))
    if pivot_rule == "best":
        if scores is None or len(scores) != len(clusters):
            raise ValueError("pivot_rule 'best' needs the pivot scores of every row (scores=)")
        return _top_pivot_per_key(_camera_groups(clusters, camids)[1], pivots, np.asarray(scores))
    return pivots


def _check_options(mode: str, pivot_rule: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if pivot_rule not in PIVOT_RULES:
        raise ValueError(f"pivot_rule must be one of {PIVOT_RULES}, got {pivot_rule!r}")


def _camera_groups(clusters: np.ndarray, camids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera indices 0..C-1 and the (cluster, camera) key of every row."""
    cams = np.unique(camids, return_inverse=True)[1].astype(np.int64)
    return cams, clusters * (int(cams.max()) + 1) + cams


def _top_pivot_per_key(keys: np.ndarray, pivots: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Keep, for each value of ``keys``, only its pivot of highest ``rank`` (ties: first row)."""
    rows = np.flatnonzero(pivots)
    rows = rows[np.lexsort((-rank[rows], keys[rows]))]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = keys[rows[1:]] != keys[rows[:-1]]
    out = np.zeros_like(pivots)
    out[rows[first]] = True
    return out


def _split_groups(group: np.ndarray, vouch: np.ndarray, pivots: np.ndarray) -> np.ndarray:
    """The (cluster, camera) groups whose pivots lie in more than one local cluster."""
    _, first = np.unique(vouch[pivots], return_index=True)
    groups, counts = np.unique(group[pivots][first], return_counts=True)
    return groups[counts > 1]
