"""The cluster memory: centroids at the start of an epoch and the momentum update (Eq. 2)."""

from __future__ import annotations

import math

import torch

from pipeline.train.memory import ClusterMemory, cluster_centroids


def test_centroids_are_the_normalised_mean_of_each_cluster():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 2])
    centroids = cluster_centroids(features, labels, 3)
    s = 1 / math.sqrt(2)
    assert torch.allclose(centroids, torch.tensor([[s, s], [0.0, 1.0], [-1.0, 0.0]]))


def test_update_moves_each_batch_cluster_towards_the_mean_of_its_samples():
    memory = ClusterMemory(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]), 0.2, 0.1)
    # cluster 0 twice (mean (0.5, 0.5)), cluster 2 once, cluster 1 not in the batch
    features = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    memory.update(features, torch.tensor([0, 0, 2]))
    moved_0 = torch.tensor([0.2 + 0.8 * 0.5, 0.8 * 0.5])  # m u + (1 - m) mean f
    moved_2 = torch.tensor([0.8, -0.2])
    expected = torch.stack(
        [moved_0 / moved_0.norm(), torch.tensor([0.0, 1.0]), moved_2 / moved_2.norm()]
    )
    assert torch.allclose(memory.features, expected)


def test_from_features_builds_one_row_per_cluster_and_logits_over_tau():
    features = torch.tensor([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])
    memory = ClusterMemory.from_features(features, torch.tensor([1, 0, 1]), 0.2, 0.5)
    assert len(memory) == 2
    logits = memory.logits(torch.tensor([[0.0, 1.0]]))
    s = 1 / math.sqrt(1.6**2 + 0.8**2)
    assert torch.allclose(logits, torch.tensor([[1.0, 0.8 * s]]) / 0.5)
