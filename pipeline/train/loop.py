"""One training epoch over pseudo labels, shared by both stages.

Each step: augmented images -> embeddings f(x) (and the model's other training outputs, such as
CA-UReID's camera-specific embedding) -> each named loss term of the stage (stage 1:
the contrastive loss against the cluster memory, Eq. 3; stage 2 also weighted, Eq. 6, plus beta
times the camera domain loss behind the gradient reversal layer, Eq. 7-9; see
:mod:`pipeline.train.losses`) -> their weighted sum -> Adam step -> the terms' updates (the
momentum update of the memory rows of the batch's clusters, Eq. 2). A non-finite loss stops
training with a PipelineError naming the epoch and iteration before it can reach the weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from pipeline.data.images import ImageDataset, normalize_batch
from pipeline.errors import PipelineError
from pipeline.train.losses import Batch, EpochTargets, LossTerm
from pipeline.train.sampler import IdentitySampler
from pipeline.train.state import seed_worker
from pipeline.train.transforms import train_transform

LOADER_PREFETCH = 4


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


def train_epoch(
    model: nn.Module,
    losses: dict[str, LossTerm],
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    targets: EpochTargets,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    epoch: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Train one pass of ``loader``; return the mean of each loss term over its iterations, as
    ``loss_<name>`` columns and their weighted sum ``loss_total``.

    The terms' ``start_epoch`` hooks must have run. ``epoch`` (0-based) only names the epoch in
    the progress bar and in errors.
    """
    from tqdm import tqdm

    model.train()
    for term in losses.values():
        term.train()
    channels_last = device.type == "cuda"
    autocast = (
        torch.autocast(device_type=device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    columns = [f"loss_{name}" for name in losses] + ["loss_total"]
    totals = torch.zeros(len(columns), dtype=torch.float64)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", unit="batch", disable=not progress)
    iteration = 0
    for iteration, (images, positions) in enumerate(bar, start=1):
        images = normalize_batch(images.to(device, non_blocking=True))
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        positions = positions.to(device, non_blocking=True)
        with autocast:
            features, outputs = model(images, with_outputs=True)
        outputs = {name: value.float() for name, value in outputs.items()}
        batch = Batch(features.float(), positions, targets, outputs)
        values = [term(batch) for term in losses.values()]
        total = weighted_sum(values, [term.weight for term in losses.values()])
        terms = torch.stack([*values, total]).detach().double().cpu()
        if not torch.isfinite(terms).all():
            shown = ", ".join(
                f"{name} {value:.4g}" for name, value in zip(columns, terms.tolist(), strict=True)
            )
            raise PipelineError(
                f"epoch {epoch + 1}, iteration {iteration}: loss is not finite ({shown}); "
                "training stopped before the weights were changed. Lower --lr, or check the "
                "inputs (images, labels, weights)"
            )
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        stepped = Batch(batch.features.detach(), positions, targets)
        for term in losses.values():
            term.after_step(stepped)
        totals += terms
        bar.set_postfix(loss=f"{terms[-1].item():.3f}", refresh=False)
    if iteration == 0:
        raise PipelineError(f"epoch {epoch + 1}: the loader yielded no batch")
    return dict(zip(columns, (totals / iteration).tolist(), strict=True))


def weighted_sum(values: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Eq. 9: ``sum_i weight_i * value_i``, in order (a weight of 1 multiplies nothing)."""
    total = None
    for value, weight in zip(values, weights, strict=True):
        term = value if weight == 1.0 else weight * value
        total = term if total is None else total + term
    return total
