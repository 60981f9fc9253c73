"""The cluster memory: one L2-normalised centroid per pseudo-label cluster (Eq. 1-2).

Rebuilt at the start of every epoch from the mean embedding of each cluster's members (so it
always matches the epoch's labels), then moved towards the batch features after each step with
momentum m (Eq. 2). The contrastive losses (Eq. 3, 6) compare embeddings with its rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cluster_centroids(
    features: torch.Tensor, labels: torch.Tensor, n_clusters: int
) -> torch.Tensor:
    """(K, D) L2-normalised mean of the ``features`` (N, D) of each cluster ``0..K-1``.

    Every cluster must have at least one member (labels are contiguous).
    """
    sums = torch.zeros(n_clusters, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)
    return F.normalize(sums, dim=1)


class ClusterMemory:
    """Cluster centroids with the momentum update of Eq. 2, vectorised over a batch.

    When several samples of one cluster are in a batch, the cluster is updated once with their
    mean: ``u <- normalise(m u + (1 - m) mean_j f_j)``. With one sample per cluster this is
    exactly Eq. 2 followed by re-normalisation, as in ClusterContrast; with several it replaces
    their sequential updates by one, which weighs the samples equally instead of favouring the
    last one and needs no loop.
    """

    def __init__(self, centroids: torch.Tensor, momentum: float, temperature: float) -> None:
        self.features = centroids
        self.momentum = momentum
        self.temperature = temperature

    @classmethod
    def from_features(
        cls, features: torch.Tensor, labels: torch.Tensor, momentum: float, temperature: float
    ) -> ClusterMemory:
        n_clusters = int(labels.max()) + 1
        return cls(cluster_centroids(features, labels, n_clusters), momentum, temperature)

    def __len__(self) -> int:
        return self.features.shape[0]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(B, K) similarities to every centroid divided by the temperature tau."""
        return features @ self.features.T / self.temperature

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Eq. 2 for the clusters in the batch (``features`` detached, (B, D))."""
        clusters, inverse = labels.unique(return_inverse=True)
        sums = torch.zeros(len(clusters), features.shape[1], device=features.device)
        sums.index_add_(0, inverse, features.float())
        counts = torch.bincount(inverse, minlength=len(clusters)).unsqueeze(1)
        means = sums / counts
        moved = self.momentum * self.features[clusters] + (1 - self.momentum) * means
        self.features[clusters] = F.normalize(moved, dim=1)
