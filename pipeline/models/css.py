"""CA-UReID's camera style separation (CSS) module (Sec. 3.2, Eq. 3 and 5).

An attention mask ``Attn(F)`` in (0, 1) over the backbone's last feature map F (B, C, H, W)
splits it into a camera-specific map ``F_sp = Attn(F) * F`` (Eq. 3) and a camera-agnostic map
``F_ag = (1 - Attn(F)) * F`` (Eq. 5), so that ``F_sp + F_ag = F``. The camera-specific map goes
through global average pooling and BatchNorm to the embedding ``f_sp`` that a camera classifier
learns from (L_sep, Eq. 4, in :mod:`pipeline.train.ca_ureid`); the camera-agnostic map replaces F
in the encoder, so retrieval and every other loss see ``F_ag`` only.

The mask has the shape of the soft attention of HA-CNN's harmonious attention block (Li, Zhu and
Gong, CVPR 2018), which the paper uses: a spatial part (one H x W map shared by all channels:
the channel mean, a strided 3x3 convolution, upsampled back, a 1x1 convolution) times a channel
part (one weight per channel: global pooling and a bottleneck of two 1x1 convolutions), fused
across channels by a 1x1 convolution and a sigmoid. Two choices of ours: no ReLU before the
sigmoid (HA-CNN's fusing block has one, which would keep the mask above 0.5, so F_ag could never
hold more than half of F), and the fusing BatchNorm's bias starts at ``INITIAL_BIAS``: the mask
starts near 0.05, so a module added to a trained encoder starts as (almost) the identity on the
camera-agnostic side instead of halving every feature at random.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.settings import setting

REDUCTION = 16  # channel bottleneck of the channel attention (HA-CNN's)
INITIAL_BIAS = -3.0  # sigmoid(-3) = 0.047: the starting mask


@dataclass(frozen=True)
class CameraStyleOptions:
    """CA-UReID's camera style separation module on the encoder's last feature map (Eq. 3, 5)."""

    enabled: bool = setting(
        False,
        "add the camera style separation module: the embedding comes from the camera-agnostic "
        "map (Eq. 5); the camera-specific map feeds the separation loss (Eq. 3-4). A model "
        "without it (init-model's) gets a freshly initialised one, seeded by --seed",
        flag="--css",
    )


def separate(features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3 and 5: ``(mask * F, (1 - mask) * F)``, the camera-specific and camera-agnostic
    maps; ``mask`` broadcasts against ``features``."""
    return mask * features, (1 - mask) * features


def _conv_bn(inputs: int, outputs: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(inputs, outputs, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(outputs),
    ]


class HarmoniousAttention(nn.Module):
    """The soft attention mask (B, C, H, W) in (0, 1) of a feature map (module docstring)."""

    def __init__(self, channels: int, reduction: int = REDUCTION) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.spatial_down = nn.Sequential(*_conv_bn(1, 1, 3, stride=2), nn.ReLU(inplace=True))
        self.spatial_up = nn.Sequential(*_conv_bn(1, 1, 1), nn.ReLU(inplace=True))
        self.channel = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            *_conv_bn(channels, hidden, 1),
            nn.ReLU(inplace=True),
            *_conv_bn(hidden, channels, 1),
            nn.ReLU(inplace=True),
        )
        self.fuse = nn.Sequential(*_conv_bn(channels, channels, 1))
        nn.init.constant_(self.fuse[1].bias, INITIAL_BIAS)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        spatial = self.spatial_down(features.mean(dim=1, keepdim=True))
        spatial = F.interpolate(
            spatial, size=features.shape[-2:], mode="bilinear", align_corners=False
        )
        spatial = self.spatial_up(spatial)
        return torch.sigmoid(self.fuse(spatial * self.channel(features)))


class CameraStyleSeparation(nn.Module):
    """The CSS module: the attention mask and the camera-specific branch's GAP + BN."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.attention = HarmoniousAttention(channels)
        self.specific_neck = nn.BatchNorm1d(channels)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(F_ag, F_sp)`` of a feature map: the camera-agnostic map first (the encoder's)."""
        specific, agnostic = separate(features, self.attention(features))
        return agnostic, specific

    def specific_embedding(self, specific: torch.Tensor) -> torch.Tensor:
        """``f_sp``: BN(GAP(F_sp)), the camera classifier's input (Eq. 4)."""
        return self.specific_neck(specific.mean(dim=(2, 3)).float())
