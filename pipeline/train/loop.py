"""One training epoch over pseudo labels, shared by both stages.

Each step: augmented images -> embeddings f(x) -> loss against the cluster memory (Eq. 3, or
Eq. 6 with cluster weights) plus, in stage 2 with the camera classifier, beta times the camera
domain loss behind the gradient reversal layer (Eq. 7-9) -> Adam step -> momentum update of the
memory rows of the batch's clusters (Eq. 2). A non-finite loss stops training with a
PipelineError naming the epoch and iteration before it can reach the weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from pipeline.data.images import ImageDataset, normalize_batch
from pipeline.errors import PipelineError
from pipeline.models import ReIDModel
from pipeline.train.losses import camera_domain_loss, weighted_contrastive_loss
from pipeline.train.memory import ClusterMemory
from pipeline.train.sampler import IdentitySampler
from pipeline.train.state import seed_worker
from pipeline.train.transforms import train_transform

LOADER_PREFETCH = 4
LOSS_TERMS = ("loss_contrastive", "loss_camera", "loss_total")


def build_optimizer(params, lr: float, weight_decay: float) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, step_size: int
) -> torch.optim.lr_scheduler.StepLR:
    """lr x0.1 every ``step_size`` epochs."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=0.1)


def make_train_loader(
    paths: Sequence[str],
    labels: np.ndarray,
    cameras: np.ndarray,
    *,
    height: int,
    width: int,
    batch_size: int,
    instances: int,
    iters: int,
    workers: int,
    generator: torch.Generator,
    pin_memory: bool = False,
) -> DataLoader:
    """Batches of ``(uint8 images, positions)`` drawn P x K by :class:`IdentitySampler`;
    ``positions`` index ``paths``/``labels``. Sampling, augmentation and worker seeds all come
    from ``generator``."""
    sampler = IdentitySampler(
        labels,
        cameras,
        batch_size=batch_size,
        instances=instances,
        iters=iters,
        generator=generator,
    )
    return DataLoader(
        ImageDataset(paths, train_transform(height, width)),
        batch_sampler=sampler,
        num_workers=workers,
        worker_init_fn=seed_worker,
        generator=generator,
        pin_memory=pin_memory,
        prefetch_factor=LOADER_PREFETCH if workers else None,
    )


@dataclass
class EpochTargets:
    """Per-position training targets, on the training device."""

    labels: torch.Tensor  # (N,) int64 cluster of each position
    weights: torch.Tensor | None  # (N,) float32 cluster weight (Eq. 6), None = Eq. 3
    cameras: torch.Tensor | None  # (N,) int64 camera index for the classifier, None = off


def train_epoch(
    model: ReIDModel,
    memory: ClusterMemory,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    targets: EpochTargets,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    classifier: nn.Module | None = None,
    beta: float = 1.0,
    epoch: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Train one pass of ``loader``; return the mean of each loss term over its iterations.

    ``epoch`` (0-based) only names the epoch in the progress bar and in errors.
    """
    from tqdm import tqdm

    model.train()
    if classifier is not None:
        classifier.train()
    channels_last = device.type == "cuda"
    autocast = (
        torch.autocast(device_type=device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    totals = torch.zeros(len(LOSS_TERMS), dtype=torch.float64)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", unit="batch", disable=not progress)
    iteration = 0
    for iteration, (images, positions) in enumerate(bar, start=1):
        images = normalize_batch(images.to(device, non_blocking=True))
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        positions = positions.to(device, non_blocking=True)
        labels = targets.labels[positions]
        with autocast:
            features = model(images)
        features = features.float()
        contrastive = weighted_contrastive_loss(
            memory.logits(features),
            labels,
            None if targets.weights is None else targets.weights[positions],
        )
        camera = torch.zeros((), device=device)
        if classifier is not None:
            camera = camera_domain_loss(classifier(features), targets.cameras[positions])
        total = contrastive + beta * camera
        terms = torch.stack([contrastive, camera, total]).detach().double().cpu()
        if not torch.isfinite(terms).all():
            values = ", ".join(
                f"{name} {value:.4g}"
                for name, value in zip(LOSS_TERMS, terms.tolist(), strict=True)
            )
            raise PipelineError(
                f"epoch {epoch + 1}, iteration {iteration}: loss is not finite ({values}); "
                "training stopped before the weights were changed. Lower --lr, or check the "
                "inputs (images, labels, weights)"
            )
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        memory.update(features.detach(), labels)
        totals += terms
        bar.set_postfix(loss=f"{terms[2].item():.3f}", refresh=False)
    if iteration == 0:
        raise PipelineError(f"epoch {epoch + 1}: the loader yielded no batch")
    return dict(zip(LOSS_TERMS, (totals / iteration).tolist(), strict=True))
