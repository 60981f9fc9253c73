"""P x K identity sampling over pseudo labels, preferring instances from different cameras.

Each batch holds P = batch_size // K clusters with K instances each. Clusters are taken in the
order of a random permutation, a new permutation starting when one is used up (a cluster that
would appear twice in one batch at that seam is put back for the next batch). A cluster's K
instances are drawn round-robin over its cameras (in random order, each camera's images
shuffled), so they come from min(K, cameras of the cluster) different cameras: the positives
the loss sees are cross-camera ones whenever the cluster has them. A cluster smaller than K
repeats images.

In a job of several processes (:mod:`pipeline.train.distributed`) every process draws the same
global batches from identically seeded generators and takes its own slice of their clusters:
process ``rank`` of ``world`` gets the clusters ``rank * P/world .. (rank + 1) * P/world - 1``
with their K instances each, so that the slices in rank order are the batch of one process.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from pipeline.errors import PipelineError


class IdentitySampler(Sampler[list[int]]):
    """Yields ``iters`` batches of positions into ``labels`` (labels >= 0, contiguous), of
    ``batch_size // instances`` clusters (fewer if there are fewer) x ``instances``.

    ``iters=0`` means one pass over the samples: ceil(N / batch_size) batches. All randomness
    comes from ``generator``, so a seed (or a restored generator state) fixes the batches. With
    ``world`` > 1 the batch's clusters are a multiple of ``world`` and the sampler yields the
    share of process ``rank`` (module docstring); it draws the same numbers for any ``rank``.
    """

    def __init__(
        self,
        labels: np.ndarray,
        cameras: np.ndarray,
        *,
        batch_size: int,
        instances: int,
        iters: int,
        generator: torch.Generator,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        labels = np.asarray(labels)
        cameras = np.asarray(cameras)
        self.n_clusters = int(labels.max()) + 1
        self.instances = instances
        identities = min(batch_size // instances, self.n_clusters)
        self.identities = identities - identities % world
        if self.identities == 0:
            raise PipelineError(
                f"{self.n_clusters} cluster(s) cannot fill a batch of identities shared by "
                f"{world} training processes; train on fewer GPUs (train.gpus, --gpus)"
            )
        self.rank, self.world = rank, world
        self.iters = iters or -(-len(labels) // batch_size)
        self.generator = generator
        # members[k] = one tensor of positions per camera of cluster k
        order = np.lexsort((cameras, labels))
        bounds = np.flatnonzero(np.diff(labels[order])) + 1
        self.members = [
            [torch.from_numpy(group[cameras[group] == cam]) for cam in np.unique(cameras[group])]
            for group in np.split(order, bounds)
        ]

    def __len__(self) -> int:
        return self.iters

    def _randperm(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.generator)

    def instances_of(self, cluster: int) -> list[int]:
        """K positions of ``cluster``, round-robin over its cameras in random order."""
        per_camera = [group[self._randperm(len(group))] for group in self.members[cluster]]
        per_camera = [per_camera[i] for i in self._randperm(len(per_camera)).tolist()]
        longest = max(len(group) for group in per_camera)
        # column j holds the j-th image of each camera: reading row-major alternates cameras
        grid = torch.full((longest, len(per_camera)), -1, dtype=torch.int64)
        for column, group in enumerate(per_camera):
            grid[: len(group), column] = group
        interleaved = grid.flatten()
        interleaved = interleaved[interleaved >= 0]
        repeats = -(-self.instances // len(interleaved))
        return interleaved.repeat(repeats)[: self.instances].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        queue: list[int] = []
        for _ in range(self.iters):
            batch_clusters: list[int] = []
            deferred: list[int] = []
            while len(batch_clusters) < self.identities:
                if not queue:
                    queue = self._randperm(self.n_clusters).tolist()
                cluster = queue.pop()
                (deferred if cluster in batch_clusters else batch_clusters).append(cluster)
            queue.extend(deferred)
            drawn = [self.instances_of(cluster) for cluster in batch_clusters]
            share = len(drawn) // self.world
            yield [p for positions in drawn[self.rank * share :][:share] for p in positions]
