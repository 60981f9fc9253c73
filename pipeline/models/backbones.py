"""Backbones: torchvision ResNets with the ReID last stride, and IBN-a ResNet-50.

IBN-a (Pan et al., ECCV 2018) replaces the first BatchNorm of every bottleneck in layers 1-3
with an IBN layer: InstanceNorm on the first half of the channels, BatchNorm on the rest. The
submodule names (``bn1.IN``, ``bn1.BN``) follow the released ``resnet50_ibn_a.pth`` so that file
loads as it is.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from pipeline.errors import PipelineError

ARCHS = ("resnet18", "resnet50", "resnet50_ibn_a")


class IBN(nn.Module):
    """Instance-batch normalisation: IN on the first ``ratio`` of channels, BN on the rest."""

    def __init__(self, channels: int, ratio: float = 0.5) -> None:
        super().__init__()
        self.half = int(channels * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(channels - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, rest = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat([self.IN(first.contiguous()), self.BN(rest.contiguous())], dim=1)


def build_resnet(arch: str, last_stride: int = 1) -> nn.Module:
    """A randomly initialised torchvision ResNet (with its ``fc``, for weight loading).

    ``last_stride=1`` removes the downsampling of layer 4 (the ReID standard: a 16x8 final map
    for 256x128 inputs instead of 8x4).
    """
    if arch not in ARCHS:
        raise PipelineError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if last_stride not in (1, 2):
        raise PipelineError(f"last_stride must be 1 or 2, got {last_stride}")
    base = "resnet50" if arch == "resnet50_ibn_a" else arch
    net = getattr(torchvision.models, base)(weights=None)
    if arch == "resnet50_ibn_a":
        for layer in (net.layer1, net.layer2, net.layer3):
            for block in layer:
                block.bn1 = IBN(block.bn1.num_features)
    first = net.layer4[0]
    strided_conv = first.conv2 if hasattr(first, "conv3") else first.conv1
    strided_conv.stride = (last_stride, last_stride)
    first.downsample[0].stride = (last_stride, last_stride)
    return net


def feature_dim(net: nn.Module) -> int:
    return net.fc.in_features
