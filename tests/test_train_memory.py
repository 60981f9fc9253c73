"""The cluster memory: centroids at the start of an epoch and the momentum update (Eq. 2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.train.memory import ClusterMemory, cluster_centroids


def test_centroids_are_the_normalised_mean_of_each_cluster():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 2])
    centroids = cluster_centroids(features, labels, 3)
    s = 1 / math.sqrt(2)
    assert torch.allclose(centroids, torch.tensor([[s, s], [0.0, 1.0], [-1.0, 0.0]]))


def test_mean_update_moves_each_batch_cluster_towards_the_mean_of_its_samples():
    memory = ClusterMemory(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]), 0.2, 0.1, "mean")
    # cluster 0 twice (mean (0.5, 0.5)), cluster 2 once, cluster 1 not in the batch
    features = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    memory.update(features, torch.tensor([0, 0, 2]))
    moved_0 = torch.tensor([0.2 + 0.8 * 0.5, 0.8 * 0.5])  # m u + (1 - m) mean f
    moved_2 = torch.tensor([0.8, -0.2])
    expected = torch.stack(
        [moved_0 / moved_0.norm(), torch.tensor([0.0, 1.0]), moved_2 / moved_2.norm()]
    )
    assert torch.allclose(memory.features, expected)


def unit(degrees):
    return torch.tensor([math.cos(math.radians(degrees)), math.sin(math.radians(degrees))])


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [(90, 0, 22.5), (0, 90, 45.0)],
)
def test_per_sample_update_takes_the_batch_in_order_and_renormalises_every_step(
    first, second, expected
):
    # at m = 0.5 a step moves a unit centroid to the bisector of it and the sample: cluster 0
    # (at 0 degrees) gets samples at `first` then `second` degrees, with a sample of cluster 1
    # between them; 90 then 0 gives 45 then 22.5 degrees (normalising once at the end would
    # give 18.4: 0.25 u + 0.25 q1 + 0.5 q2 = (0.75, 0.25))
    memory = ClusterMemory(torch.stack([unit(0), unit(90), unit(-90)]), 0.5, 0.1, "sample")
    features = torch.stack([unit(first), unit(180), unit(second)])
    memory.update(features, torch.tensor([0, 1, 0]))
    expected_rows = torch.stack([unit(expected), unit(135), unit(-90)])
    assert torch.allclose(memory.features, expected_rows, atol=1e-6)


def test_per_sample_update_equals_the_plain_loop_over_the_batch():
    generator = torch.Generator().manual_seed(0)
    centroids = F.normalize(torch.randn(10, 8, generator=generator), dim=1)
    features = F.normalize(torch.randn(48, 8, generator=generator), dim=1)
    labels = torch.randint(0, 6, (48,), generator=generator)  # clusters 6-9 not in the batch
    memory = ClusterMemory(centroids.clone(), 0.2, 0.1, "sample")
    memory.update(features, labels)
    expected = centroids.clone()
    for q, y in zip(features, labels, strict=True):
        expected[y] = 0.2 * expected[y] + 0.8 * q
        expected[y] /= expected[y].norm()
    assert torch.allclose(memory.features, expected, atol=1e-6)


def test_mean_update_of_the_same_batch_uses_the_mean_once():
    memory = ClusterMemory(torch.stack([unit(0), unit(90), unit(-90)]), 0.5, 0.1, "mean")
    memory.update(torch.stack([unit(90), unit(180), unit(0)]), torch.tensor([0, 1, 0]))
    # 0.5 (1, 0) + 0.5 (0.5, 0.5) = (0.75, 0.25)
    moved = torch.tensor([3.0, 1.0]) / math.sqrt(10)
    assert torch.allclose(memory.features, torch.stack([moved, unit(135), unit(-90)]), atol=1e-6)


def test_per_sample_update_is_the_default_of_the_memory_and_of_both_training_stages():
    from pipeline.train.losses import ClusterContrastLoss, ContrastiveOptions, LossContext
    from pipeline.train.options import Optimisation, TrainOptions

    assert ClusterMemory(torch.eye(2), 0.2, 0.1).update_rule == "sample"
    assert Optimisation().memory_update == TrainOptions(epochs=1).memory_update == "sample"
    loss = ClusterContrastLoss.build(ContrastiveOptions(), LossContext(2, (0, 1), 0.5, 0.1))
    loss.start_epoch(0, torch.stack([unit(0), unit(90)]), _targets([0, 1]))
    # a batch of cluster 0 at 90 then 0 degrees, m = 0.5: per sample 45 then 22.5 degrees
    loss.after_step(_batch([unit(90), unit(0)], [0, 0]))
    assert torch.allclose(loss.memory.features[0], unit(22.5), atol=1e-6)


def _targets(labels):
    from pipeline.train.losses import EpochTargets

    return EpochTargets(labels=torch.tensor(labels), cameras=torch.zeros(len(labels)).long())


def _batch(features, labels):
    from pipeline.train.losses import Batch

    return Batch(torch.stack(features), torch.arange(len(labels)), _targets(labels))


def test_unknown_update_is_an_error():
    with pytest.raises(ValueError, match="update must be one of"):
        ClusterMemory(torch.eye(2), 0.2, 0.1, "last")


def test_from_features_builds_one_row_per_cluster_and_logits_over_tau():
    features = torch.tensor([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])
    memory = ClusterMemory.from_features(features, torch.tensor([1, 0, 1]), 0.2, 0.5)
    assert len(memory) == 2
    logits = memory.logits(torch.tensor([[0.0, 1.0]]))
    s = 1 / math.sqrt(1.6**2 + 0.8**2)
    assert torch.allclose(logits, torch.tensor([[1.0, 0.8 * s]]) / 0.5)
