"""Training augmentation, on ``uint8`` images in the loader workers.

Resize, random horizontal flip, pad 10 + random crop back to size, random erasing (p 0.5, filled
with the ImageNet mean colour, which is 0 after normalisation). Scaling and normalisation run
per batch on the device (:func:`pipeline.data.images.normalize_batch`), as for extraction, so
the workers pass 4x less data and do less arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable

from torchvision.transforms import v2

from pipeline.models import IMAGENET_MEAN

PADDING = 10
ERASING_P = 0.5
MEAN_COLOUR = [round(255 * c) for c in IMAGENET_MEAN]


def train_transform(height: int, width: int) -> Callable:
    """PIL RGB image -> augmented (3, height, width) ``uint8`` tensor."""
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize((height, width), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.Pad(PADDING),
            v2.RandomCrop((height, width)),
            v2.RandomErasing(p=ERASING_P, value=MEAN_COLOUR),
        ]
    )
