"""Training in several processes (DistributedDataParallel), on the CPU with gloo: every rank
ends with the same weights and cluster memory, and 2 processes with B/2 images each match one
process with B after a few steps."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError
from pipeline.train.distributed import Group, current, launch
from pipeline.train.loop import build_optimizer, train_epoch
from pipeline.train.losses import Batch, ClusterContrastLoss, EpochTargets, LossTerm
from pipeline.train.sampler import IdentitySampler

IMAGES, CLUSTERS, CAMERAS, BATCH, INSTANCES, STEPS = 48, 8, 3, 16, 4, 4
# how far 2 processes may be from 1 after STEPS steps: the same sums, added in another order
TOLERANCE = 1e-5


class Encoder(nn.Module):
    """Without BatchNorm, whose statistics would be over each process's share of a batch."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 4 * 2, 8)

    def forward(self, images: torch.Tensor, with_outputs: bool = False):
        embeddings = F.normalize(self.linear(images.flatten(1)), dim=1)
        return (embeddings, {}) if with_outputs else embeddings


class CameraProbe(LossTerm):
    """A loss term with parameters of its own, outside DDP (as the camera classifier)."""

    name = "probe"

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, CAMERAS)

    def forward(self, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(self.linear(batch.features), batch.cameras)


def train_steps(folder: Path, device: str = "cpu") -> None:
    """STEPS steps in this process, alone or one of a group; its state to rank<r>.pt."""
    group, device = current(), torch.device(device)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (IMAGES, 3, 4, 2), dtype=torch.uint8, generator=generator)
    labels, cameras = torch.arange(IMAGES) % CLUSTERS, torch.arange(IMAGES) % CAMERAS
    weights = torch.rand(IMAGES, generator=generator)
    targets = EpochTargets(labels.to(device), cameras.to(device), weights.to(device))
    model, probe = Encoder().to(device), CameraProbe().to(device)
    contrastive = ClusterContrastLoss(momentum=0.2, temperature=0.1, weighted=True)
    features = F.normalize(torch.randn(IMAGES, 8, generator=generator), dim=1)
    contrastive.start_epoch(0, features.to(device), targets)
    optimizer = build_optimizer([*model.parameters(), *probe.parameters()], 0.01, 5e-4)
    sampler = IdentitySampler(
        labels.numpy(),
        cameras.numpy(),
        batch_size=BATCH,
        instances=INSTANCES,
        iters=STEPS,
        generator=generator,
        rank=group.rank,
        world=group.world,
    )
    batches = [(images[positions], torch.tensor(positions)) for positions in sampler]
    losses = train_epoch(
        group.wrap(model),
        {"contrastive": contrastive, "probe": probe},
        batches,
        optimizer,
        targets,
        device=device,
        progress=False,
        group=group,
    )
    state = {
        "encoder": model.linear.weight,
        "probe": probe.linear.weight,
        "memory": contrastive.memory.features,
        "losses": torch.tensor(list(losses.values())),
        "batch": torch.tensor(len(batches[0][1])),
    }
    torch.save({key: value.cpu() for key, value in state.items()}, folder / f"rank{group.rank}.pt")


def check_processes_against_one(folder: Path, world: int, device: str) -> None:
    """``world`` processes end with one state, within TOLERANCE of one process alone."""
    (folder / "alone").mkdir()
    train_steps(folder / "alone", device)
    launch(world, torch.device(device), functools.partial(train_steps, folder, device))
    alone = torch.load(folder / "alone" / "rank0.pt")
    ranks = [torch.load(folder / f"rank{rank}.pt") for rank in range(world)]
    assert alone["batch"] == BATCH and all(r["batch"] == BATCH // world for r in ranks)
    for key in ("encoder", "probe", "memory", "losses"):
        assert all(torch.equal(ranks[0][key], other[key]) for other in ranks[1:]), key
        assert torch.allclose(ranks[0][key], alone[key], rtol=0, atol=TOLERANCE), key
    torch.manual_seed(0)
    assert not torch.allclose(alone["encoder"], Encoder().linear.weight, atol=1e-3)


def test_two_processes_hold_one_state_and_take_the_steps_of_one(tmp_path):
    check_processes_against_one(tmp_path, 2, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_processes_hold_one_state_and_take_the_steps_of_one(tmp_path):
    """NCCL and DDP on the GPUs; one process on a machine with one GPU (the same code)."""
    check_processes_against_one(tmp_path, min(2, torch.cuda.device_count()), "cuda")


def fail_on_rank_one() -> None:
    if current().rank == 1:
        raise PipelineError("rank 1 gives up")
    torch.distributed.barrier()  # rank 0 waits for a rank that never comes


def test_a_failing_process_stops_the_job_with_its_message():
    with pytest.raises(PipelineError, match="training process 1 of 2: rank 1 gives up"):
        launch(2, torch.device("cpu"), fail_on_rank_one)


def test_the_shares_of_a_group_cover_every_item_once_in_order():
    shares = [range(10)[Group(rank, 3).share(10)] for rank in range(3)]
    assert [list(share) for share in shares] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    rows = np.arange(20, dtype=np.float32).reshape(10, 2)
    assert Group().gather_rows(rows, 10) is rows
