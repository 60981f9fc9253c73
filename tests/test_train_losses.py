"""The losses of both training stages on hand-built cases: Eq. 3/6, Eq. 7, Eq. 8."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.train.losses import (
    CameraClassifier,
    GradientReversal,
    camera_domain_loss,
    weighted_contrastive_loss,
)
from pipeline.train.memory import ClusterMemory

# two unit embeddings and three memory rows; tau = 0.5, so the logits are
# f1 . M / tau = (2, 0, -2) and f2 . M / tau = (0, 2, 0)
FEATURES = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
MEMORY = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
LABELS = torch.tensor([0, 2])
CE_1 = -2 + math.log(math.exp(2) + 1 + math.exp(-2))  # f1 against its cluster 0
CE_2 = -0 + math.log(1 + math.exp(2) + 1)  # f2 against its cluster 2


def logits(features: torch.Tensor) -> torch.Tensor:
    return ClusterMemory(MEMORY, momentum=0.2, temperature=0.5).logits(features)


def test_contrastive_loss_without_weights_is_the_mean_cross_entropy_eq3():
    loss = weighted_contrastive_loss(logits(FEATURES), LABELS)
    assert loss.item() == pytest.approx((CE_1 + CE_2) / 2, rel=1e-6)


def test_weighted_loss_divides_by_the_batch_size_not_the_weights_eq6():
    weights = torch.tensor([0.5, 2.0])
    loss = weighted_contrastive_loss(logits(FEATURES), LABELS, weights)
    assert loss.item() == pytest.approx((0.5 * CE_1 + 2.0 * CE_2) / 2, rel=1e-6)


def test_all_zero_weights_give_zero_loss_and_zero_gradient_not_nan():
    features = FEATURES.clone().requires_grad_()
    loss = weighted_contrastive_loss(logits(features), LABELS, torch.zeros(2))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_gradient_reversal_is_identity_forward_and_minus_lambda_backward_eq7():
    x = torch.tensor([[1.0, -2.0, 3.0]], requires_grad=True)
    upstream = torch.tensor([[0.5, 1.0, -4.0]])
    y = GradientReversal(0.3)(x)
    assert torch.equal(y, x)
    (y * upstream).sum().backward()
    assert torch.allclose(x.grad, -0.3 * upstream)


def test_camera_classifier_gradient_reaches_the_features_reversed_and_scaled():
    torch.manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    cameras = torch.tensor([0, 1, 2, 0, 1, 2])
    classifier = CameraClassifier(feature_dim=8, num_cameras=3, grl_lambda=0.5)
    reversed_in = features.clone().requires_grad_()
    plain_in = features.clone().requires_grad_()
    camera_domain_loss(classifier(reversed_in), cameras).backward()
    camera_domain_loss(classifier.mlp(plain_in), cameras).backward()
    assert classifier(features).shape == (6, 3)
    assert torch.allclose(reversed_in.grad, -0.5 * plain_in.grad)
    assert plain_in.grad.abs().sum() > 0


def test_camera_domain_loss_is_the_mean_cross_entropy_on_logits_eq8():
    camera_logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    expected = ((-2 + math.log(math.exp(2) + 1)) + math.log(2)) / 2
    loss = camera_domain_loss(camera_logits, torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_weights_normalisation_divides_by_the_sum_of_the_weights_as_the_release():
    weights = torch.tensor([0.5, 2.0])
    loss = weighted_contrastive_loss(logits(FEATURES), LABELS, weights, "weights")
    assert loss.item() == pytest.approx((0.5 * CE_1 + 2.0 * CE_2) / 2.5, rel=1e-6)
    # the release's 0/0 (NaN) for a batch of single-camera clusters is 0 here
    assert weighted_contrastive_loss(logits(FEATURES), LABELS, torch.zeros(2), "weights") == 0
    with pytest.raises(ValueError, match="normalisation must be one of"):
        weighted_contrastive_loss(logits(FEATURES), LABELS, weights, "sum")


def test_cluster_weights_start_at_their_epoch_eq3_before():
    from pipeline.train.losses import (
        Batch,
        ClusterContrastLoss,
        ContrastiveOptions,
        EpochTargets,
        LossContext,
    )

    # counted from 1: the release's epochs 0-4 (0-based) train Eq. 3, epoch 5 Eq. 6
    options = ContrastiveOptions(weights_from_epoch=6, normalisation="weights")
    term = ClusterContrastLoss.build(options, LossContext(2, (0, 1), 0.2, 0.5))
    targets = EpochTargets(
        labels=LABELS, cameras=torch.tensor([0, 1]), weights=torch.tensor([0.5, 2.0])
    )
    batch = Batch(FEATURES, torch.arange(2), targets)
    losses = {}
    for epoch in (4, 5):
        term.start_epoch(epoch, MEMORY, EpochTargets(torch.tensor([0, 1, 2]), torch.zeros(3)))
        losses[epoch] = term(batch).item()
    assert losses[4] == pytest.approx((CE_1 + CE_2) / 2, rel=1e-6)
    assert losses[5] == pytest.approx((0.5 * CE_1 + 2.0 * CE_2) / 2.5, rel=1e-6)


def test_camera_loss_is_active_up_to_its_last_epoch():
    from pipeline.train.losses import CameraAdversarialLoss, CameraLossOptions, LossContext

    context = LossContext(8, (0, 1), 0.2, 0.1)
    release = CameraAdversarialLoss.build(CameraLossOptions(last_epoch=3), context)
    paper = CameraAdversarialLoss.build(CameraLossOptions(), context)
    assert [release.active(epoch) for epoch in range(5)] == [True, True, True, False, False]
    assert all(paper.active(epoch) for epoch in range(50))


def test_release_camera_classifier_layers_and_its_loss_on_probabilities():
    torch.manual_seed(0)
    classifier = CameraClassifier(feature_dim=8, num_cameras=3, head="release").eval()
    shapes = [(m.in_features, m.out_features) for m in classifier.mlp if hasattr(m, "out_features")]
    assert shapes == [(8, 100), (100, 100), (100, 3)]
    assert [type(m).__name__ for m in classifier.mlp] == [
        "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear", "BatchNorm1d", "ReLU", "Linear",
        "LogSoftmax",
    ]  # fmt: skip
    assert classifier.mlp[3].p == 0.5
    features = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    probabilities = classifier(features)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(4))
    cameras = torch.tensor([0, 1, 2, 0])
    # the release's cross-entropy of probabilities: -p_c + ln sum_j exp(p_j), near ln 3
    expected = (torch.logsumexp(probabilities, 1) - probabilities[torch.arange(4), cameras]).mean()
    loss = camera_domain_loss(probabilities, cameras)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert math.log(math.e + 2) - 1 <= loss.item() <= math.log(math.e + 2)
