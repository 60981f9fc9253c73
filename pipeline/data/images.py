"""Image decoding for extraction and training: a Dataset over index rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from pipeline.models import IMAGENET_MEAN, IMAGENET_STD


def load_rgb(path: str) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def eval_transform(height: int, width: int) -> Callable:
    """Resize to (height, width), scale to [0, 1], normalise with ImageNet statistics."""
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize((height, width), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class ImageDataset(Dataset):
    """Items are ``(image_tensor, position)``; ``position`` indexes ``paths``."""

    def __init__(self, paths: Sequence[str], transform: Callable) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_rgb(self.paths[position])), position
