"""Losses of both training stages: the (weighted) cluster contrastive loss and the camera
domain loss behind a gradient reversal layer.

- Eq. 3 / Eq. 6: cross-entropy of the similarities to the cluster memory over a temperature,
  each sample weighted by its cluster weight w_i (Eq. 6; all ones gives Eq. 3).
- Eq. 7: the gradient reversal layer R_lambda, identity forward, -lambda * grad backward.
- Eq. 8: the camera classifier D, an MLP on R_lambda(f(x)) trained with cross-entropy on the
  camera labels; through R_lambda the encoder is pushed to make cameras indistinguishable.
- Eq. 9: L = L_inter + beta * L_domain (summed in the training loop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CLASSIFIER_HIDDEN = 256


def weighted_contrastive_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 6: ``(1/B) sum_i w_i * CE(logits_i, y_i)``; without ``weights``, Eq. 3 (mean CE).

    ``logits`` (B, K) are memory similarities over the temperature (see ``ClusterMemory``).
    The sum is divided by the batch size, not by the sum of the weights, so a weight scales its
    sample's gradient and a batch whose weights are all zero gives 0 (never 0/0).
    """
    losses = F.cross_entropy(logits, labels, reduction="none")
    if weights is not None:
        losses = losses * weights
    return losses.sum() / len(labels)


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coefficient: float) -> torch.Tensor:
        ctx.coefficient = coefficient
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.coefficient * grad, None


class GradientReversal(nn.Module):
    """Eq. 7: ``R_lambda(x) = x`` forward; the gradient is multiplied by ``-lambda`` backward."""

    def __init__(self, coefficient: float = 1.0) -> None:
        super().__init__()
        self.coefficient = coefficient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ReverseGradient.apply(x, self.coefficient)

    def extra_repr(self) -> str:
        return f"lambda={self.coefficient}"


class CameraClassifier(nn.Module):
    """The camera domain classifier D of Eq. 8 behind R_lambda: embedding (B, D) -> camera
    logits (B, C), through Linear(D, 256), BatchNorm, ReLU, Linear(256, C)."""

    def __init__(self, feature_dim: int, num_cameras: int, grl_lambda: float = 1.0) -> None:
        super().__init__()
        self.reversal = GradientReversal(grl_lambda)
        self.mlp = nn.Sequential(
            nn.Linear(feature_dim, CLASSIFIER_HIDDEN),
            nn.BatchNorm1d(CLASSIFIER_HIDDEN),
            nn.ReLU(inplace=True),
            nn.Linear(CLASSIFIER_HIDDEN, num_cameras),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.reversal(features))


def camera_domain_loss(logits: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
    """Eq. 8, averaged over the batch: cross-entropy of the camera logits against the camera
    index of each sample (0..C-1, the position of its camid in the classifier's order)."""
    return F.cross_entropy(logits, cameras)
