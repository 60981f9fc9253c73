"""The cluster memory: one L2-normalised centroid per pseudo-label cluster (Eq. 1-2).

Rebuilt at the start of every epoch from the mean embedding of each cluster's members (so it
always matches the epoch's labels), then moved towards the batch features after each step with
momentum m (Eq. 2, ``u <- m u + (1 - m) q``). The contrastive losses (Eq. 3, 6) compare
embeddings with its rows.

Eq. 2 is stated for one query ``q``; a batch holds several samples of a cluster. Two updates
(the setting ``memory_update`` of both training stages):

- ``"sample"`` (default): Eq. 2 once per sample, in batch order, the centroid re-normalised
  after every step, exactly as the released code (``calr/models/cm.py`` lines 28-30,
  ``CM.backward``: a loop over the batch) and ClusterContrast. Without the
  re-normalisations the ``n`` samples ``q_1..q_n`` of one cluster would compound to
  ``m^n u + (1 - m) sum_j m^(n-j) q_j``; with them the weights also depend on the norms along
  the way, so the steps are taken one occurrence at a time: step ``r`` moves, all at once,
  every cluster that has an ``r``-th sample in the batch (as many steps as the most frequent
  cluster has samples, e.g. 16 instances per identity).
- ``"mean"`` (this project's earlier update): one step per cluster with the mean of its
  samples, ``u <- normalise(m u + (1 - m) mean_j q_j)``: the same with one sample per
  cluster; with several it weighs them equally instead of favouring the last ones, and keeps
  more of the old centroid (at m = 0.2 and 16 samples, a weight of 0.2 on it instead of
  0.2^16, before the re-normalisations).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

UPDATES = ("sample", "mean")


def group_sums(features: torch.Tensor, labels: torch.Tensor, n_groups: int) -> torch.Tensor:
    """(K, D) sum of the ``features`` (N, D) of each group ``0..K-1`` (zeros for a group
    without members)."""
    sums = torch.zeros(n_groups, features.shape[1], dtype=features.dtype, device=features.device)
    return sums.index_add_(0, labels, features)


def group_means(features: torch.Tensor, labels: torch.Tensor, n_groups: int) -> torch.Tensor:
    """(K, D) mean of the ``features`` (N, D) of each group ``0..K-1``; a group without
    members is a row of zeros."""
    counts = torch.bincount(labels, minlength=n_groups).clamp(min=1).unsqueeze(1)
    return group_sums(features, labels, n_groups) / counts.to(features.dtype)


def cluster_centroids(
    features: torch.Tensor, labels: torch.Tensor, n_clusters: int
) -> torch.Tensor:
    """(K, D) L2-normalised mean of the ``features`` (N, D) of each cluster ``0..K-1``.

    Every cluster must have at least one member (labels are contiguous).
    """
    return F.normalize(group_sums(features, labels, n_clusters), dim=1)


class ClusterMemory:
    """Cluster centroids with the momentum update of Eq. 2, vectorised over a batch.

    ``update`` is one of :data:`UPDATES`: ``"sample"`` (the default: Eq. 2 per sample, as the
    equation, ClusterContrast and the released code) or ``"mean"`` (once per cluster with the
    batch mean); see the module docstring.
    """

    def __init__(
        self, centroids: torch.Tensor, momentum: float, temperature: float, update: str = "sample"
    ) -> None:
        if update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
        self.features = centroids
        self.momentum = momentum
        self.temperature = temperature
        self.update_rule = update

    @classmethod
    def from_features(
        cls,
        features: torch.Tensor,
        labels: torch.Tensor,
        momentum: float,
        temperature: float,
        update: str = "sample",
    ) -> ClusterMemory:
        n_clusters = int(labels.max()) + 1
        return cls(cluster_centroids(features, labels, n_clusters), momentum, temperature, update)

    def __len__(self) -> int:
        return self.features.shape[0]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(B, K) similarities to every centroid divided by the temperature tau."""
        return features @ self.features.T / self.temperature

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Eq. 2 for the clusters in the batch (``features`` detached, (B, D), batch order)."""
        if self.update_rule == "sample":
            self._update_per_sample(features.float(), labels)
            return
        # every cluster's sum and count through one (B, K) indicator product: no data-dependent
        # shapes (``unique`` would wait for the device), and no atomics, so every process of a
        # multi-GPU job computes the same bits
        features = features.float()
        members = (labels.unsqueeze(1) == torch.arange(len(self), device=labels.device)).float()
        counts = members.sum(0).unsqueeze(1)
        means = members.T @ features / counts.clamp(min=1)
        moved = F.normalize(self.momentum * self.features + (1 - self.momentum) * means, dim=1)
        self.features = torch.where(counts > 0, moved, self.features)

    def _update_per_sample(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Eq. 2 sample by sample in batch order, one vectorised step per occurrence rank."""
        _, inverse, counts = labels.unique(return_inverse=True, return_counts=True)
        order = torch.argsort(inverse, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(inverse)
        rank[order] = torch.arange(len(labels), device=labels.device) - starts[inverse[order]]
        for step in range(int(counts.max()) if len(labels) else 0):
            rows = rank == step
            clusters = labels[rows]
            moved = self.momentum * self.features[clusters] + (1 - self.momentum) * features[rows]
            self.features[clusters] = F.normalize(moved, dim=1)
