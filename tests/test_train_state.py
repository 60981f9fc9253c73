"""Random states survive a checkpoint round trip; options and augmentation are checked."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.errors import PipelineError
from pipeline.train.options import TrainOptions
from pipeline.train.state import capture_rng, job_hash, job_seed, restore_rng, seed_everything
from pipeline.train.transforms import MEAN_COLOUR, train_transform


def draw(generator: torch.Generator) -> tuple:
    return (
        random.random(),
        np.random.random(),  # noqa: NPY002 - the global state is what is under test
        torch.rand(3).tolist(),
        torch.randperm(10, generator=generator).tolist(),
    )


def test_rng_states_restore_after_a_weights_only_round_trip(tmp_path):
    generator = torch.Generator()
    seed_everything(5, generator)
    draw(generator)
    path = tmp_path / "rng.pt"
    torch.save(capture_rng(generator), path)
    expected = draw(generator)
    draw(generator)  # move every state on
    restore_rng(torch.load(path, weights_only=True), generator)
    assert draw(generator) == expected


def test_job_seed_depends_on_seed_and_first_epoch_and_hash_on_every_argument():
    assert job_seed(0, 0) == job_seed(0, 0)
    assert len({job_seed(0, 0), job_seed(0, 1), job_seed(1, 0)}) == 3
    assert job_hash({"a": 1, "b": 2}) == job_hash({"b": 2, "a": 1})
    assert job_hash({"a": 1}) != job_hash({"a": 2})


def test_options_name_every_bad_value():
    with pytest.raises(
        PipelineError,
        match="--lr must be greater than 0.*--batch-size must be at least --instances",
    ):
        TrainOptions(epochs=1, batch_size=2, instances=4, lr=0).check()
    with pytest.raises(PipelineError, match="--momentum must be less than 1"):
        TrainOptions(epochs=1, momentum=1.0).check()


def test_train_transform_keeps_size_and_erases_with_the_mean_colour():
    torch.manual_seed(0)
    image = Image.fromarray(np.full((128, 64, 3), 255, dtype=np.uint8))
    outputs = [train_transform(64, 32)(image) for _ in range(20)]
    assert all(o.shape == (3, 64, 32) and o.dtype == torch.uint8 for o in outputs)
    mean = torch.tensor(MEAN_COLOUR, dtype=torch.uint8).view(3, 1, 1)
    erased = [((o == mean).all(dim=0)).any().item() for o in outputs]
    padded = [(o == 0).all(dim=0).any().item() for o in outputs]
    assert 0 < sum(erased) < 20  # p = 0.5
    assert any(padded)  # the crop reached into the zero padding
