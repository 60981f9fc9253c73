"""Discard probability schedules (Table IV): exact values at given epochs."""

import math

import pytest

from pipeline.cluster.schedules import SCHEDULES, discard_probability
from pipeline.errors import PipelineError


@pytest.mark.parametrize(
    ("schedule", "epoch", "expected"),
    [
        ("none", 0, 0.8),
        ("none", 7, 0.8),
        ("linear", 5, 0.8 * 0.5),
        ("linear", 9, 0.8 * 0.1),
        ("polynomial", 5, 0.8 * 0.25),
        ("polynomial", 8, 0.8 * 0.04),
        ("exponential", 5, 0.8 * 0.9**5),
        ("exponential", 1, 0.8 * 0.9),
        ("cosine", 5, 0.8 * 0.5),
        ("cosine", 2, 0.8 * 0.5 * (1 + math.cos(math.pi * 0.2))),
    ],
)
def test_values_at_given_epochs(schedule, epoch, expected):
    assert discard_probability(epoch, 10, schedule, p0=0.8) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_starts_at_p0(schedule):
    assert discard_probability(0, 50, schedule, p0=0.6) == pytest.approx(0.6)


def test_parameters_of_polynomial_and_exponential():
    assert discard_probability(5, 10, "polynomial", power=3) == pytest.approx(0.125)
    assert discard_probability(2, 10, "exponential", gamma=0.5) == pytest.approx(0.25)


def test_cosine_span_stretches_the_cosine_as_the_released_trace():
    # span 3: 0.5 (1 + cos(pi e / (3 E))); at e = 5 of 10 the angle is pi / 6
    expected = 0.5 * (1 + math.sqrt(3) / 2)
    assert discard_probability(5, 10, "cosine", cosine_span=3) == pytest.approx(expected)
    assert discard_probability(49, 50, "cosine", cosine_span=3) == pytest.approx(0.759, abs=1e-3)
    # span 1, the default: sin^2(pi / (2 E)) on the last epoch
    last = discard_probability(49, 50, "cosine")
    assert last == pytest.approx(math.sin(math.pi / 100) ** 2, abs=1e-15)


def test_epoch_outside_the_run_is_an_error():
    with pytest.raises(PipelineError, match=r"--epoch 10 is outside 0\.\.9 \(--total-epochs 10\)"):
        discard_probability(10, 10, "cosine")


def test_unknown_schedule_and_bad_p0_are_errors():
    with pytest.raises(PipelineError, match="--schedule must be one of"):
        discard_probability(0, 10, "step")
    with pytest.raises(PipelineError, match=r"--p0 must be a probability"):
        discard_probability(0, 10, "none", p0=1.5)
    with pytest.raises(PipelineError, match="--cosine-span must be positive, got 0"):
        discard_probability(0, 10, "cosine", cosine_span=0)
