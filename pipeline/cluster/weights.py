"""Cluster weights of the weighted inter-camera contrastive loss (paper Eq. 6).

Following the released code, cluster ``k``'s weight is ``w_k = ln(1 + H_k)`` with ``H_k`` the
natural-log entropy of the camera distribution of its members: 0 for a cluster seen by one camera
only, ``ln(1 + ln C)`` for one spread evenly over C cameras. Clusters spanning cameras are the
ones the camera-invariant model must learn from.

Floor: ``w_k = max(ln(1 + H_k), floor)``. With ``floor = 0`` (the default) the weights are the
released code's. Single-camera clusters then contribute nothing, which stops the contrastive
term altogether when every cluster is camera-pure, as happens when training starts from random
weights (the demo): a small floor keeps them in training at a reduced weight.

All-zero batches: the reference divides the weighted loss by the sum of the batch's weights and
gets NaN when every sample of a batch comes from single-camera clusters. The loss in
``pipeline.train`` instead averages ``w_i * loss_i`` over the batch size, so such a batch
contributes 0 (no gradient) rather than NaN; these functions only supply the weights.
"""

from __future__ import annotations

import numpy as np


def cluster_weights(labels: np.ndarray, camids: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """``w_k`` for k = 0..K-1 (K = max label + 1), float64; ``labels`` -1 are ignored."""
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"weight floor must be in [0, 1], got {floor}")
    labels = np.asarray(labels, dtype=np.int64)
    clustered = labels >= 0
    n_clusters = int(labels.max()) + 1 if clustered.any() else 0
    cams = np.unique(np.asarray(camids)[clustered], return_inverse=True)[1]
    n_cams = int(cams.max()) + 1 if len(cams) else 1
    counts = np.bincount(labels[clustered] * n_cams + cams, minlength=n_clusters * n_cams).reshape(
        n_clusters, n_cams
    )
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    terms = np.zeros_like(share)
    np.log(share, out=terms, where=share > 0)
    entropy = -(share * terms).sum(axis=1)
    return np.maximum(np.log1p(entropy), floor)


def sample_weights(labels: np.ndarray, camids: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """Each sample's cluster weight ``w_{label}``; 0 where the label is -1."""
    labels = np.asarray(labels, dtype=np.int64)
    out = np.zeros(len(labels), dtype=np.float64)
    clustered = labels >= 0
    out[clustered] = cluster_weights(labels, camids, floor)[labels[clustered]]
    return out
