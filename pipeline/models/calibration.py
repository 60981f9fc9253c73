"""BatchNorm statistics of an untrained encoder, estimated on the training images.

A randomly initialised network holds BatchNorm running statistics it has never seen data for
(mean 0, variance 1). In eval mode (extraction, clustering, the "initial" evaluation) it is then
a different function from the one training optimises: in train mode every BatchNorm normalises
with the statistics of its batch, and after a few dozen steps (momentum 0.1) the running
statistics are the data's. Clustering the uncalibrated features and then training compares two
networks, not "before" and "after" training; on the demo the local clusters first got worse and
only later better for that reason.

:func:`calibrate_batchnorm` sets the running statistics to what training starts from: every
BatchNorm layer's running mean and variance become the average over the given batches of the
batch statistics, computed in train mode (each layer normalised by its batch statistics, as in
a training step) with no gradient and no weight change. This is the standard re-estimation of
BN statistics (as AdaBN and SWA do it). ImageNet weights carry statistics of real images and
the paper uses them as they are, so the pipeline calibrates only when asked (``model:
calibrate_bn`` in the config: on in the demo's ``config.yaml`` and in
``config/market-subset.yaml``, which start from random weights; off in ``config/paper.yaml``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [
        module
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
    ]


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Replace the running statistics of every BatchNorm layer of ``model`` by the average of
    its batch statistics over ``batches`` (normalised images on the model's device); return the
    number of images seen.

    Running mean = mean over batches of the batch means; running variance = mean over batches of
    the unbiased batch variances (PyTorch's cumulative average, ``momentum=None``). Weights,
    biases, the momentum and the train/eval mode of the model are unchanged afterwards. No
    batch (or a batch of one image, whose variance is undefined) is an error.
    """
    layers = batchnorm_layers(model)
    momenta = [layer.momentum for layer in layers]
    was_training = model.training
    seen = 0
    try:
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None
        model.train()
        for images in batches:
            if len(images) < 2:
                raise ValueError(
                    f"a calibration batch of {len(images)} image has no variance; "
                    "use batches of two images or more"
                )
            model(images)
            seen += len(images)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        model.train(was_training)
    if not seen:
        raise ValueError("no images to calibrate the BatchNorm statistics on")
    return seen
