"""P x K identity sampling: batch shape, cross-camera instances, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.train.sampler import IdentitySampler


def make_sampler(labels, cameras, *, batch_size=8, instances=4, iters=0, seed=0, **group):
    return IdentitySampler(
        np.asarray(labels),
        np.asarray(cameras),
        batch_size=batch_size,
        instances=instances,
        iters=iters,
        generator=torch.Generator().manual_seed(seed),
        **group,
    )


# cluster 0: 4 cameras x 3 images; cluster 1: 5 images from camera 1, 1 from camera 2;
# cluster 2: 2 images (fewer than K); cluster 3: 6 images of one camera
LABELS = [0] * 12 + [1] * 6 + [2] * 2 + [3] * 6
CAMERAS = [1, 2, 3, 4] * 3 + [1, 1, 1, 1, 1, 2] + [5, 6] + [3] * 6


def test_batches_are_p_identities_times_k_instances():
    labels = np.asarray(LABELS)
    sampler = make_sampler(LABELS, CAMERAS, batch_size=8, instances=4, iters=5)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 5
    for batch in batches:
        groups = labels[np.asarray(batch)].reshape(2, 4)
        assert (groups == groups[:, :1]).all()  # K instances of one cluster
        assert groups[0, 0] != groups[1, 0]  # P distinct clusters


def test_one_pass_by_default_and_every_cluster_in_each_permutation():
    sampler = make_sampler(LABELS, CAMERAS, batch_size=8, instances=4, iters=0)
    assert len(sampler) == -(-len(LABELS) // 8)  # ceil(26 / 8) = 4 batches
    labels = np.asarray(LABELS)
    first_two = [labels[b[0]] for batch in list(sampler)[:2] for b in (batch[:4], batch[4:])]
    assert sorted(first_two) == [0, 1, 2, 3]


def test_instances_come_from_as_many_cameras_as_the_cluster_has():
    cameras = np.asarray(CAMERAS)
    sampler = make_sampler(LABELS, CAMERAS, seed=3)
    for _ in range(20):
        assert len(set(cameras[sampler.instances_of(0)])) == 4
        # the single camera-2 image of cluster 1 is always among its 4 instances
        assert 17 in sampler.instances_of(1)


def test_small_cluster_repeats_its_own_images():
    sampler = make_sampler(LABELS, CAMERAS)
    drawn = sampler.instances_of(2)
    assert len(drawn) == 4 and set(drawn) == {18, 19}


def test_same_seed_same_batches_other_seed_other_batches():
    def batches(seed):
        return list(make_sampler(LABELS, CAMERAS, iters=6, seed=seed))

    assert batches(7) == batches(7)
    assert batches(7) != batches(8)


def test_processes_take_consecutive_shares_of_the_batches_of_one():
    alone = list(make_sampler(LABELS, CAMERAS, batch_size=16, iters=6, seed=2))
    shares = [
        list(make_sampler(LABELS, CAMERAS, batch_size=16, iters=6, seed=2, rank=r, world=2))
        for r in (0, 1)
    ]
    assert all(len(batch) == 8 for share in shares for batch in share)
    assert [first + second for first, second in zip(*shares, strict=True)] == alone


def test_more_processes_than_identities_in_a_batch_is_an_error():
    with pytest.raises(PipelineError, match="4 cluster.* shared by 3 training processes"):
        make_sampler([0, 1, 2, 3], [1, 2, 1, 2], batch_size=8, instances=4, rank=0, world=3)
