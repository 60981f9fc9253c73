"""One training job on several GPUs (``train.gpus: N``): N processes, DistributedDataParallel.

:func:`launch` starts N processes (the ``spawn`` start method: CUDA cannot be used in a forked
process) that join one process group (NCCL on GPUs, one GPU per process; gloo on the CPU, which
is how the tests run it) and run the same training function. They keep one invariant: **every
process holds the same state**, so that rank 0's checkpoint is every rank's.

- They start from the same checkpoint and seed and draw the same random numbers: the sampler's
  global batches and the augmentation parameters come from identically seeded generators (so
  rank 0's random state, saved in the checkpoint, resumes every rank).
- Each embeds its share of the images and they exchange the rows, so that every process
  clusters the same features and builds the same cluster memory; the labels of rank 0 are
  broadcast all the same (:meth:`Group.broadcast`), whatever the clustering does.
- Each step, every process trains on its slice of the global P x K batch (P/N identities x K,
  :class:`pipeline.train.sampler.IdentitySampler`); DistributedDataParallel averages the
  encoder's gradients and :meth:`Group.average_gradients` those of the loss terms (the camera
  classifier), so that the step is that of the whole batch: the loss terms average over their
  samples. BatchNorm normalises over each process's share (SyncBatchNorm runs on GPUs only);
  its running statistics are rank 0's (DDP broadcasts them before every forward pass, and
  :meth:`Group.broadcast_buffers` once more after each epoch).
- The cluster memory is moved with the all-gathered batch (:meth:`Group.gather`, in rank
  order: the global batch's order), the same update on every process.

Only rank 0 writes the checkpoint and the log. With one process (``gpus: 1``) nothing here
starts a process: :class:`Group` is then a world of one outside any process group, whose methods
return their input. (:func:`launch` with one process runs the same code as with several, DDP
and exchanges included: how a machine with one GPU checks the multi-GPU path.)
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Group:
    """This process's place in a training job: rank ``rank`` of ``world`` processes, whose
    collective operations exchange tensors on ``device``; ``distributed``: whether it belongs
    to a process group (:func:`launch`), else every method returns its input."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    distributed: bool = False

    @property
    def leader(self) -> bool:
        """Rank 0: the process that writes."""
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's consecutive share of ``n`` items (the first ``n % world`` ranks take one
        more)."""
        size, extra = divmod(n, self.world)
        start = self.rank * size + min(self.rank, extra)
        return slice(start, start + size + (self.rank < extra))

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` (same shape on all) concatenated along dim 0, in rank order."""
        if not self.distributed:
            return tensor
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def gather_rows(self, rows: np.ndarray, n: int) -> np.ndarray:
        """The ``n`` float32 rows (embeddings) whose :meth:`share` each rank holds as ``rows``,
        in order."""
        if not self.distributed:
            return rows
        longest = -(-n // self.world)
        padded = torch.zeros((longest, *rows.shape[1:]), dtype=torch.float32, device=self.device)
        padded[: len(rows)] = torch.from_numpy(rows).to(self.device)
        gathered = self.gather(padded).cpu().numpy()
        sizes = [len(range(n)[Group(rank, self.world).share(n)]) for rank in range(self.world)]
        return np.concatenate([gathered[r * longest :][:size] for r, size in enumerate(sizes)])

    def any(self, flag: torch.Tensor) -> torch.Tensor:
        """A boolean scalar true on every rank when it is true on one (stays on the device)."""
        if not self.distributed:
            return flag
        import torch.distributed as dist

        value = flag.float()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return value > 0

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean over the ranks of ``tensor``."""
        if not self.distributed:
            return tensor
        import torch.distributed as dist

        total = tensor.clone()
        dist.all_reduce(total)
        return total / self.world

    def broadcast(self, array: np.ndarray) -> np.ndarray:
        """Rank 0's ``array`` (every rank passes one of the same shape and type)."""
        if not self.distributed:
            return array
        import torch.distributed as dist

        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        dist.broadcast(tensor, src=0)
        return tensor.cpu().numpy()

    def average_gradients(self, parameters: list[nn.Parameter]) -> None:
        """Replace the gradients of ``parameters`` (those outside DDP) by their mean over the
        ranks, in one exchange."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if not self.distributed or not grads:
            return
        import torch.distributed as dist

        flat = torch.cat([grad.reshape(-1) for grad in grads])
        dist.all_reduce(flat)
        flat /= self.world
        for grad, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            grad.copy_(part.view_as(grad))

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Give every rank rank 0's buffers of ``module`` (BatchNorm's running statistics)."""
        if not self.distributed:
            return
        import torch.distributed as dist

        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` as DistributedDataParallel (its gradients averaged over the ranks), or
        itself outside a process group."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, output_device=ids and ids[0])


def current() -> Group:
    """The group of the process group this process belongs to (:func:`launch`), or a world of
    one outside it."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return Group()
    nccl = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    return Group(dist.get_rank(), dist.get_world_size(), device, distributed=True)


def launch(world: int, device: torch.device, worker: Callable, *args) -> None:
    """Run ``worker(*args)`` in ``world`` new processes joined in one process group, and return
    when all of them have finished.

    On CUDA process ``rank`` uses GPU ``rank`` of those visible (``device`` is a CUDA device:
    there must be ``world`` of them); on the CPU they share the cores. The processes log as this
    one does (rank 0 at its level, the others warnings only). When one fails the others are
    stopped, and a :class:`PipelineError` names the rank and says why; ``worker`` and ``args``
    must pickle (module-level functions, ``functools.partial`` of them, plain data).
    """
    import torch.multiprocessing as mp

    if device.type == "cuda" and torch.cuda.device_count() < world:
        raise PipelineError(
            f"--gpus {world} but {torch.cuda.device_count()} GPU(s) are visible; ask for at "
            "most that many (train.gpus), or make more visible (CUDA_VISIBLE_DEVICES)"
        )
    root = logging.getLogger()
    formatter = root.handlers[0].formatter if root.handlers else None
    if type(formatter) is not logging.Formatter:  # one that pickles (not pytest's, say)
        formatter = None
    with tempfile.TemporaryDirectory(prefix="calr-train-") as folder:
        setup = (world, device.type, folder, root.level, formatter)
        context = mp.start_processes(
            _process, args=(setup, worker, args), nprocs=world, join=False, start_method="spawn"
        )
        try:
            while not context.join():
                pass
        except mp.ProcessRaisedException as failure:
            # a PipelineError says what went wrong; the other ranks' errors follow from it (a
            # peer gone), whichever the join saw first
            stated = sorted(Path(folder).glob("error-*"), key=lambda p: int(p.name[6:]))
            if stated:
                rank = stated[0].name.removeprefix("error-")
                raise PipelineError(
                    f"training process {rank} of {world}: {stated[0].read_text()}"
                ) from None
            raise PipelineError(
                f"training process {failure.error_index} of {world} failed:\n{failure.msg}"
            ) from None
        except mp.ProcessExitedException as failure:
            raise PipelineError(
                f"training process {failure.error_index} of {world} ended with exit code "
                f"{failure.exit_code} (killed, or out of memory?); the job resumes from its "
                "last completed epoch when rerun"
            ) from None
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()


def _process(rank: int, setup: tuple, worker: Callable, args: tuple) -> None:
    """One process of :func:`launch`: logging, device, process group, then ``worker``."""
    import torch.distributed as dist

    world, device_type, folder, level, formatter = setup
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    quiet = max(level, logging.WARNING)
    logging.basicConfig(level=level if rank == 0 else quiet, handlers=[handler])
    if device_type == "cuda":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // world))
        device = torch.device("cpu")
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        init_method=Path(folder, "rendezvous").as_uri(),
        rank=rank,
        world_size=world,
        device_id=device if device.type == "cuda" else None,
    )
    try:
        worker(*args)
    except PipelineError as error:
        Path(folder, f"error-{rank}").write_text(str(error))
        raise
    finally:
        dist.destroy_process_group()
