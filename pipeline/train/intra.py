"""Stage 1, intra-camera training (paper Sec. III-B, Algorithm 1 stage 1), for one camera.

The camera's encoder f^c starts from the initial weights; every epoch it embeds the camera's
training images, clusters them with average-linkage agglomerative clustering into
``images // ratio`` local clusters, and trains on them with the contrastive loss of Eq. 3. After
the last epoch the images are embedded and clustered once more: those are the camera's final
local labels, which stage 2 uses to refine the global clusters (Eq. 5).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.cluster.agglomerative import LocalClustering, camera_local_labels
from pipeline.cluster.quality import cluster_quality
from pipeline.models import ReIDModel
from pipeline.train.options import TrainOptions
from pipeline.train.runner import EpochData, extract


def quality_stats(labels: np.ndarray, pids: np.ndarray) -> dict:
    """Pairwise precision, recall, F-score and expansion against the ground truth, when the
    identities are known (diagnostics for the log only; training never reads them)."""
    if not (np.asarray(pids) >= 0).any():
        return {}
    quality = cluster_quality(labels, pids).as_dict()
    return {
        f"quality_{key}": quality[key] for key in ("precision", "recall", "fscore", "expansion")
    }


def intra_epoch(
    model: ReIDModel,
    paths: Sequence[str],
    pids: np.ndarray,
    camera: int,
    clustering: LocalClustering,
    options: TrainOptions,
    labels: np.ndarray | None = None,
) -> EpochData:
    """Embed the camera's images with the current encoder and cluster them as
    `pipeline cluster-intra` does: one epoch's data.

    ``labels`` given (the first epoch's, clustered from the initial features by
    `pipeline cluster-intra`) are used instead of clustering again."""
    features = extract(model, paths, options)
    if labels is None:
        labels = camera_local_labels(features, clustering, camera)
    return EpochData(
        labels=labels,
        features=features,
        stats={"n_outliers": 0, **quality_stats(labels, pids)},
    )
