"""Image decoding for extraction and training: Datasets over image paths.

Two routes give the same pixels (except for JPEGs of twice the target size or more, see below):

- :class:`ImageDataset` with :func:`eval_transform`: PIL image -> normalised float tensor, for
  code that augments PIL images (training).
- :class:`ResizedImageDataset` + :func:`normalize_batch`: the loader workers only decode and
  resize to ``uint8`` (cheap to make and 4x cheaper to pass between processes than float), and
  the scaling and ImageNet normalisation run once per batch on the model's device. Extraction
  uses this route.

In the extraction route, JPEGs of at least twice the target size are decoded at a reduced DCT
scale (PIL ``draft``: 1/2, 1/4 or 1/8), which costs a fraction of a full decode; the result is
still at least the target size in both dimensions, then resized.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from pipeline.errors import PipelineError
from pipeline.models import IMAGENET_MEAN, IMAGENET_STD
from pipeline.settings import setting


@dataclass(frozen=True)
class InputSize:
    """Network input size: 256x128 for persons and 224x224 for vehicles in the paper."""

    height: int = setting(256, "input height (px)", minimum=16)
    width: int = setting(128, "input width (px)", minimum=16)


def load_rgb(path: str, min_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``path`` as RGB. With ``min_size`` = (height, width), a large JPEG may be decoded
    at a reduced scale that is still at least that size in both dimensions.

    A file that does not decode is a PipelineError naming it (in a DataLoader worker too: see
    :class:`PipelineError` for how its message crosses to the main process).
    """
    try:
        with Image.open(path) as img:
            if min_size is not None and img.format == "JPEG":
                img.draft("RGB", (min_size[1], min_size[0]))
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # PIL reports broken files as OSError, and some corrupt PNG chunks as SyntaxError
        raise PipelineError(
            f"{path}: cannot decode image ({type(exc).__name__}: {exc}); "
            "replace or remove it and rebuild the index"
        ) from exc


def resize_uint8(image: Image.Image, height: int, width: int) -> torch.Tensor:
    """PIL RGB image -> (3, height, width) uint8 tensor, bilinear with antialiasing."""
    return TF.resize(TF.pil_to_tensor(image), [height, width], antialias=True)


def normalize_batch(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float32 scaled to [0, 1] and normalised with ImageNet statistics,
    on the device and in the memory format of ``images``; one float tensor is allocated."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return images.float().div_(255.0).sub_(mean).div_(std)


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


class ResizedImageDataset(Dataset):
    """Items are ``(uint8 image (3, height, width), position)``; normalise batches with
    :func:`normalize_batch`."""

    def __init__(self, paths: Sequence[str], height: int, width: int) -> None:
        self.paths = list(paths)
        self.size = (height, width)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        return resize_uint8(
            load_rgb(self.paths[position], min_size=self.size), *self.size
        ), position
