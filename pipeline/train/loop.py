"""One training epoch over pseudo labels, shared by both stages.

Each step: augmented images -> embeddings f(x) (and the model's other training outputs, such as
CA-UReID's camera-specific embedding) -> each named loss term of the stage (stage 1:
the contrastive loss against the cluster memory, Eq. 3; stage 2 also weighted, Eq. 6, plus beta
times the camera domain loss behind the gradient reversal layer, Eq. 7-9; see
:mod:`pipeline.train.losses`) -> their weighted sum -> Adam step -> the terms' updates (the
momentum update of the memory rows of the batch's clusters, Eq. 2).

The step never waits for the device: images arrive in pinned memory and are copied without
blocking, the losses and the memory live on the device, and the loss values are summed there.
The loop waits only every :data:`LOG_EVERY` steps and at the end of the epoch, to show the loss
and to check that every loss so far was finite. A non-finite loss still never reaches the
weights: the step that computed it is flagged on the device, the optimizer step is skipped when
flagged (on the GPU the fused Adam step skips itself through its ``found_inf``, as under
mixed-precision loss scaling; on the CPU reading the flag waits for nothing), and so is every
later step of the epoch, and at the next check training stops with a PipelineError naming the
epoch and the iteration of the first such loss.

In a job of several processes (:mod:`pipeline.train.distributed`) ``model`` is the
DistributedDataParallel encoder, the loss terms' gradients are averaged over the processes, the
flag is raised on all of them when one sees a non-finite loss, and the memory moves with the
batch gathered from all of them.
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
from pipeline.train.distributed import Group
from pipeline.train.losses import Batch, EpochTargets, LossTerm
from pipeline.train.sampler import IdentitySampler
from pipeline.train.state import seed_worker
from pipeline.train.transforms import train_transform

LOADER_PREFETCH = 4
# steps between the loop's waits for the device (the progress bar's loss, the finiteness check)
LOG_EVERY = 20


def build_optimizer(params, lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam over ``params`` (tensors, all on one device). On CUDA fused: one kernel per step,
    which skips itself when its ``found_inf`` is set, so the loop never waits for the GPU.
    Elsewhere torch's per-parameter Adam: the fused CPU kernel rounds differently (its weights
    are not bit-equal to it after one step), and the CPU results stay those the pipeline gave
    before the GPU path was added."""
    params = list(params)
    fused = params[0].device.type == "cuda"
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)


def optimizer_step(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """One step of :func:`build_optimizer`'s ``optimizer``, none when ``skip`` (a 0-d tensor on
    the device) is nonzero: the fused step reads it on the device, the plain one on the CPU."""
    if optimizer.defaults["fused"]:
        optimizer.found_inf = skip
        optimizer.step()
        del optimizer.found_inf
    elif not skip.item():
        optimizer.step()


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
    group: Group | None = None,
) -> DataLoader:
    """Batches of ``(uint8 images, positions)`` drawn P x K by :class:`IdentitySampler`
    (this process's share of them in a ``group`` of several); ``positions`` index
    ``paths``/``labels``. Sampling, augmentation and worker seeds all come from ``generator``."""
    group = group or Group()
    sampler = IdentitySampler(
        labels,
        cameras,
        batch_size=batch_size,
        instances=instances,
        iters=iters,
        generator=generator,
        rank=group.rank,
        world=group.world,
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
    group: Group | None = None,
) -> dict[str, float]:
    """Train one pass of ``loader``; return the mean of each loss term over its iterations (and
    over the processes of ``group``), as ``loss_<name>`` columns and their weighted sum
    ``loss_total``.

    ``optimizer`` is :func:`build_optimizer`'s (see :func:`optimizer_step`). The
    terms' ``start_epoch`` hooks must have run. ``epoch`` (0-based) only names the epoch in the
    progress bar and in errors.
    """
    from tqdm import tqdm

    group = group or Group()
    model.train()
    for term in losses.values():
        term.train()
    channels_last = device.type == "cuda"
    autocast = (
        torch.autocast(device_type=device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    weights = [term.weight for term in losses.values()]
    term_parameters = [p for term in losses.values() for p in term.parameters()]
    failure = NonFinite([f"loss_{name}" for name in losses] + ["loss_total"], epoch, device)
    totals = torch.zeros(len(failure.columns), dtype=torch.float64, device=device)
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
        total = weighted_sum(values, weights)
        terms = torch.stack([*values, total]).detach()
        failure.see(group.any(~torch.isfinite(terms).all()), iteration, terms)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        group.average_gradients(term_parameters)
        optimizer_step(optimizer, skip=failure.flag)  # nothing once a loss was not finite
        stepped = Batch(group.gather(batch.features.detach()), group.gather(positions), targets)
        for term in losses.values():
            term.after_step(stepped)
        totals += terms
        if iteration % LOG_EVERY == 0:
            bar.set_postfix(loss=f"{failure.check(terms[-1]):.3f}", refresh=False)
    if iteration == 0:
        raise PipelineError(f"epoch {epoch + 1}: the loader yielded no batch")
    failure.check(terms[-1])
    means = group.mean(totals) / iteration
    return dict(zip(failure.columns, means.tolist(), strict=True))


class NonFinite:
    """The first non-finite loss of an epoch, recorded on the device without waiting for it."""

    def __init__(self, columns: list[str], epoch: int, device: torch.device) -> None:
        self.columns, self.epoch = columns, epoch
        self.flag = torch.zeros((), device=device)  # 1 from the first non-finite step on
        self.iteration = torch.zeros((), dtype=torch.int64, device=device)
        self.terms = torch.zeros(len(columns), device=device)

    def see(self, non_finite: torch.Tensor, iteration: int, terms: torch.Tensor) -> None:
        """Record step ``iteration``'s ``terms`` if ``non_finite`` and no step was before."""
        first = non_finite & (self.flag == 0)
        self.iteration = torch.where(first, iteration, self.iteration)
        self.terms = torch.where(first, terms, self.terms)
        self.flag = torch.maximum(self.flag, first.float())

    def check(self, loss: torch.Tensor) -> float:
        """Wait for the device: raise the PipelineError of the first non-finite loss if there
        was one, else return ``loss``."""
        flag, value = torch.stack([self.flag, loss.float()]).tolist()
        if flag:
            shown = ", ".join(
                f"{name} {term:.4g}"
                for name, term in zip(self.columns, self.terms.tolist(), strict=True)
            )
            raise PipelineError(
                f"epoch {self.epoch + 1}, iteration {int(self.iteration)}: loss is not finite "
                f"({shown}); training stopped, and neither that step nor a later one changed "
                "the weights. Lower --lr, or check the inputs (images, labels, weights)"
            )
        return value


def weighted_sum(values: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Eq. 9: ``sum_i weight_i * value_i``, in order (a weight of 1 multiplies nothing)."""
    total = None
    for value, weight in zip(values, weights, strict=True):
        term = value if weight == 1.0 else weight * value
        total = term if total is None else total + term
    return total
