"""The global clusterers, by name: what ``inter.clusterer.name`` (``--method``) chooses.

Each entry says which settings class configures it, how many neighbours per image its kNN
lists need, whether it clusters each camera's identities (then it needs the local labels), and
how it turns features, those lists and the local labels into cluster labels (-1 = outlier).
``pipeline cluster-global`` searches the neighbours once, runs the chosen clusterer, and saves
the lists for the refinement's pivot scores. Adding a clusterer: its module (a pure function
and a settings class), an entry here, and its name and section in
``workflow/schemas/inter.schema.yaml`` (see docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.cluster.association import AssociationOptions, associate
from pipeline.cluster.dbscan import DbscanOptions, dbscan_clusters
from pipeline.cluster.global_infomap import InfomapOptions, infomap_clusters


@dataclass(frozen=True)
class Clusterer:
    """A global clustering method."""

    options: type  # its settings class
    neighbours: Callable[[Any], int]  # options -> neighbours per image its kNN lists need
    neighbours_setting: str | None  # the setting that decides that number (named in warnings)
    # (features, similarities, indices, options, seed, cameras, local labels or None) -> labels
    cluster: Callable[..., np.ndarray]
    # options -> the weakest similarity of a link of its graph (None: it has no such threshold),
    # saved with the kNN lists: the released code's pivot scores count only links (Eq. 4)
    min_sim: Callable[[Any], float | None] = lambda options: None
    # options -> whether its neighbour setting counts the image itself (saved likewise)
    counts_self: Callable[[Any], bool] = lambda options: False
    # whether it needs each image's local label (the workflow's LOCAL_LABEL_CLUSTERERS)
    local_labels: bool = False


CLUSTERERS: dict[str, Clusterer] = {
    "infomap": Clusterer(
        InfomapOptions,
        neighbours=lambda options: options.neighbours,
        neighbours_setting="k",
        cluster=lambda features, sims, idx, options, seed, cameras, local: infomap_clusters(
            sims,
            idx,
            options.min_sim,
            options.min_size,
            seed,
            options.tune_iterations,
            infomap_seed=options.infomap_seed,
            isolated_nodes=options.isolated_nodes,
        ),
        min_sim=lambda options: options.min_sim,
        counts_self=lambda options: options.k_counts_self,
    ),
    "dbscan": Clusterer(
        DbscanOptions,
        neighbours=lambda options: max(options.k1, options.k2) - 1,  # k1 counts the image
        neighbours_setting="k1",
        cluster=lambda features, sims, idx, options, seed, cameras, local: dbscan_clusters(
            features, idx, options.k1, options.k2, options.eps, options.min_samples
        ),
        counts_self=lambda options: True,
    ),
    # CCAFL (Eq. 12): mutual nearest identities across cameras, no kNN lists of images needed
    # (one neighbour each, kept for the refinement's file format)
    "association": Clusterer(
        AssociationOptions,
        neighbours=lambda options: 1,
        neighbours_setting=None,
        cluster=lambda features, sims, idx, options, seed, cameras, local: associate(
            features, cameras, local, options.threshold
        ),
        local_labels=True,
    ),
}
