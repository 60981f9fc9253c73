"""Global pooling: average, or generalised mean (GeM) with a trainable exponent."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import PipelineError

POOLINGS = ("avg", "gem")


class GeM(nn.Module):
    """Generalised-mean pooling, ``(mean x^p)^(1/p)`` per channel; p is learnt, starting at 3."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1))
        return pooled.pow(1.0 / self.p)


class AvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


def build_pooling(name: str) -> nn.Module:
    if name == "gem":
        return GeM()
    if name == "avg":
        return AvgPool()
    raise PipelineError(f"unknown pooling {name!r}; choose one of {', '.join(POOLINGS)}")
