"""Embedding extraction: images -> L2-normalised embeddings, rows in the order of the paths.

Run every epoch over the whole training set before the global clustering, and once per model
for retrieval, so it is built to keep the model busy: DataLoader processes (on a GPU) or one
background thread (on CPU) only decode and resize to ``uint8``, ahead of the model; scaling,
normalisation, the optional flip and the forward pass run batched on the device under
``torch.inference_mode``, in channels_last layout, with bf16/fp16 autocast on CUDA. On a GPU
the loop never waits for the device: images arrive in pinned memory and are copied without
blocking, and each batch's embeddings are copied back into pinned memory without blocking and
read :data:`COPY_LAG` batches later, by which time the copy is done.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, default_collate

from pipeline.data.images import ResizedImageDataset, normalize_batch
from pipeline.errors import PipelineError
from pipeline.models import ReIDModel

log = logging.getLogger(__name__)

AMP_MODES = ("auto", "bf16", "fp16", "off")
MAX_MISSING_NAMED = 10
PREFETCH_BATCHES = 4  # decoded ahead of the model, per loader worker
MAX_GPU_WORKERS = 8
COPY_LAG = 2  # batches between a batch's copy to the host being queued and its rows read


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else as torch names it
    (``cpu``, ``cuda``, ``cuda:1``), checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise PipelineError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:<n>") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PipelineError(
                f"device {name!r} asked for but no CUDA GPU is visible; use --device cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PipelineError(
                f"device {name!r} asked for but only {torch.cuda.device_count()} GPU(s) visible"
            )
    elif device.type != "cpu":
        raise PipelineError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:<n>")
    return device


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``, or None for full float32.

    Autocast is used on CUDA only: ``auto`` is bf16 where the GPU supports it, else off. On CPU
    every mode runs in float32 (CPU autocast is slower than float32 for these convolutions).
    """
    if amp not in AMP_MODES:
        raise PipelineError(f"unknown amp mode {amp!r}; choose one of {', '.join(AMP_MODES)}")
    if device.type != "cuda" or amp == "off":
        if amp in ("bf16", "fp16"):
            log.info("amp %s ignored on %s: extraction runs in float32", amp, device)
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def default_num_workers(device: torch.device) -> int:
    """Loader processes for ``device``: none on CPU (a background thread decodes, see
    :func:`prefetched_batches`); on a GPU one per spare core, at most 8."""
    if device.type != "cuda":
        return 0
    return max(1, min(MAX_GPU_WORKERS, len(os.sched_getaffinity(0)) - 1))


def check_files_exist(paths: Sequence[str]) -> None:
    """Fail naming the first missing image files (and how many there are)."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        named = "\n".join(f"  {p}" for p in missing[:MAX_MISSING_NAMED])
        more = len(missing) - MAX_MISSING_NAMED
        raise PipelineError(
            f"{len(missing)} of {len(paths)} image file(s) not found:\n{named}"
            + (f"\n  ... and {more} more" if more > 0 else "")
            + "\nthe dataset moved or the index is stale: rebuild it with `pipeline index`"
        )


@contextlib.contextmanager
def inference_settings(
    model: ReIDModel, device: torch.device, amp_dtype: torch.dtype | None
) -> Iterator[None]:
    """Run the block with ``model`` on ``device`` in channels_last layout and eval mode, under
    ``torch.inference_mode`` and autocast to ``amp_dtype`` (None: float32). The model's
    train/eval mode is restored afterwards; its device and layout are kept."""
    was_training = model.training
    model.to(device, memory_format=torch.channels_last).eval()
    autocast = (
        torch.autocast(device_type=device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    try:
        with torch.inference_mode(), autocast:
            yield
    finally:
        model.train(was_training)


def prefetched_batches(
    dataset: Dataset, batch_size: int, depth: int = PREFETCH_BATCHES
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The collated batches of ``dataset`` in order, decoded by one background thread of this
    process up to ``depth`` batches ahead of the consumer.

    On a CPU-only machine this keeps the model fed at the least cost: no worker process to
    start, no inter-process copies, and PIL and torch release the GIL while they decode and
    resize, so decoding overlaps the forward pass.
    """

    def load(start: int) -> tuple[torch.Tensor, torch.Tensor]:
        stop = min(start + batch_size, len(dataset))
        return default_collate([dataset[i] for i in range(start, stop)])

    # one intra-op thread for the decoding ops, so that they do not compete with the model's
    # thread team for the cores (the setting is per thread: the caller's is unchanged)
    pool = ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="decode", initializer=torch.set_num_threads, initargs=(1,)
    )
    try:
        pending = deque()
        for start in range(0, len(dataset), batch_size):
            pending.append(pool.submit(load, start))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(cancel_futures=True)


def embed_batch(model: ReIDModel, images: torch.Tensor, flip: bool) -> torch.Tensor:
    """Embeddings of normalised ``images`` (B, 3, H, W); with ``flip``, the re-normalised mean of
    the embeddings of each image and its horizontal mirror."""
    embeddings = model(images)
    if flip:
        embeddings = F.normalize(embeddings + model(images.flip(3)), dim=1)
    return embeddings


def extract_embeddings(
    model: ReIDModel,
    paths: Sequence[str],
    *,
    height: int,
    width: int,
    batch_size: int = 64,
    num_workers: int = 2,
    device: str = "auto",
    flip: bool = False,
    amp: str = "auto",
    progress: bool = True,
) -> np.ndarray:
    """(N, D) float32 L2-normalised embeddings of the images at ``paths``, in that order.

    The model is moved to ``device`` in channels_last layout (and left there), put in eval mode
    for the extraction and returned to its previous mode afterwards. ``num_workers`` DataLoader
    processes decode and resize the images; with 0, one background thread of this process does
    (:func:`prefetched_batches`), which is faster on a CPU-only machine, where worker processes
    compete with the model's threads for the cores. A GPU needs processes to be kept fed.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise PipelineError(f"batch size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise PipelineError(f"number of loader workers must be 0 or more, got {num_workers}")
    torch_device = resolve_device(device)
    amp_dtype = resolve_amp(amp, torch_device)
    check_files_exist(paths)
    embeddings = np.empty((len(paths), model.feature_dim), dtype=np.float32)
    if not len(paths):
        return embeddings
    dataset = ResizedImageDataset(paths, height, width)
    batches = (
        DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=torch_device.type == "cuda",
            prefetch_factor=PREFETCH_BATCHES,
        )
        if num_workers
        else prefetched_batches(dataset, batch_size)
    )
    bar = tqdm(total=len(paths), unit="img", desc="extract", mininterval=1.0, disable=not progress)
    copies: deque[tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None]] = deque()
    with inference_settings(model, torch_device, amp_dtype), bar:
        for images, positions in batches:
            images = images.to(torch_device, non_blocking=True)
            batch = normalize_batch(images.contiguous(memory_format=torch.channels_last))
            copies.append((positions, *to_host(embed_batch(model, batch, flip).float())))
            while len(copies) > COPY_LAG:
                bar.update(store_rows(embeddings, *copies.popleft()))
        while copies:
            bar.update(store_rows(embeddings, *copies.popleft()))
    return embeddings


def to_host(rows: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """``rows`` on the CPU: from a GPU, a copy queued into pinned memory and the event that
    marks its end (nothing waits for it here); on the CPU, ``rows`` and no event."""
    if rows.device.type != "cuda":
        return rows, None
    host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
    host.copy_(rows, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return host, done


def store_rows(embeddings: np.ndarray, positions: torch.Tensor, rows: torch.Tensor, done) -> int:
    """Write ``rows`` (from :func:`to_host`, once its copy is ``done``) at ``positions``."""
    if done is not None:
        done.synchronize()
    embeddings[positions.numpy()] = rows.numpy()
    return len(positions)
