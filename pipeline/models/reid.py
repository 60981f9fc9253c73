"""The ReID encoder: backbone body -> [camera style separation] -> pooling -> BN neck -> L2
normalisation.

The embedding is the L2-normalised output of a BatchNorm1d whose bias is frozen at zero (the
"BN neck"); its dimension is the body's channel count (ResNet-50: 2048, MobileNetV2: 1280),
read from the registry in :mod:`pipeline.models.backbones`. The same module serves training and
extraction: the cluster memory (Eq. 1-3, 6) compares normalised embeddings by dot product.

With ``css`` (CA-UReID, :mod:`pipeline.models.css`) the body's last feature map is split into a
camera-specific and a camera-agnostic map; the embedding comes from the camera-agnostic one, and
in training (``with_outputs=True``) the camera-specific embedding is returned beside it, under
``outputs["camera_specific"]``, for the separation loss.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError
from pipeline.models.backbones import get_backbone
from pipeline.models.css import CameraStyleSeparation
from pipeline.models.pooling import build_pooling
from pipeline.models.weights import load_imagenet_weights

log = logging.getLogger(__name__)

PRETRAINED = ("none", "imagenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ReIDModel(nn.Module):
    """Maps a batch of normalised images (B, 3, H, W) to unit-length embeddings (B, D)."""

    def __init__(self, body: nn.Module, feature_dim: int, pooling: str, config: dict) -> None:
        super().__init__()
        self.body = body
        self.pool = build_pooling(pooling)
        self.feature_dim = feature_dim
        self.neck = nn.BatchNorm1d(self.feature_dim)
        nn.init.ones_(self.neck.weight)
        nn.init.zeros_(self.neck.bias)
        self.neck.bias.requires_grad_(False)
        self.config = dict(config)
        self.css: CameraStyleSeparation | None = None

    def add_css(self) -> None:
        """Add a camera style separation module (initialised from torch's generator) and
        record it in ``config``, so that the model is rebuilt with it from a checkpoint."""
        self.css = CameraStyleSeparation(self.feature_dim)
        self.config["css"] = True

    def forward(
        self, images: torch.Tensor, with_outputs: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The embeddings (B, D); with ``with_outputs`` also a dict of the other outputs that
        losses use in training (``camera_specific`` with the CSS module). A keyword rather than
        a second method, so that a wrapper (DistributedDataParallel) passes it through."""
        features = self.body(images)
        outputs = {}
        if self.css is not None:
            features, specific = self.css(features)
            if with_outputs:
                outputs["camera_specific"] = self.css.specific_embedding(specific)
        pooled = self.pool(features).flatten(1)
        embeddings = F.normalize(self.neck(pooled.float()), dim=1)
        return (embeddings, outputs) if with_outputs else embeddings


def build_model(
    arch: str = "resnet50",
    pooling: str = "avg",
    pretrained: str = "none",
    weights_path: str | None = None,
    last_stride: int = 1,
    css: bool = False,
) -> ReIDModel:
    """Build the encoder. ``pretrained='imagenet'`` loads local weights (see ``weights.py``);
    ``'none'`` is random initialisation, which is logged as a warning because ReID from scratch
    is far below published numbers. ``css`` adds the camera style separation module (recorded
    in the config only when present, so that the configs of models without it are as before)."""
    if pretrained not in PRETRAINED:
        raise PipelineError(
            f"unknown pretrained {pretrained!r}; choose one of {', '.join(PRETRAINED)}"
        )
    body, feature_dim = get_backbone(arch).build(last_stride)
    if pretrained == "imagenet":
        load_imagenet_weights(body, arch, weights_path)
    else:
        log.warning(
            "RANDOM INITIALISATION: %s starts without pretrained weights (pretrained: none); "
            "results will be far below ImageNet-initialised ones",
            arch,
        )
    config = {"arch": arch, "pooling": pooling, "last_stride": last_stride}
    model = ReIDModel(body, feature_dim, pooling, config)
    if css:
        model.add_css()
    return model
