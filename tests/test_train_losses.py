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
