"""Random-number state, determinism and the checkpointer: what a checkpoint must hold for an
exact resume.

A training job draws random numbers from Python's ``random``, numpy's global generator, torch's
CPU and CUDA generators, and one ``torch.Generator`` that feeds the identity sampler and the
DataLoader (the loader draws its workers' base seed from it). :func:`capture_rng` packs all of
them into plain data that ``torch.load(weights_only=True)`` reads back, and :func:`restore_rng`
puts them back, so a job resumed after epoch e continues with exactly the numbers an
uninterrupted job would have drawn.
"""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import torch


def job_seed(seed: int, start_epoch: int) -> int:
    """The seed of a job that starts at ``start_epoch``: a function of both, so that each round
    of stage 2 draws fresh numbers and a rerun of any round draws the same ones."""
    return int(np.random.SeedSequence([seed, start_epoch]).generate_state(1)[0])


def seed_everything(seed: int, generator: torch.Generator) -> None:
    """Seed every global generator and ``generator`` (the sampler's and loader's)."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - the global generator third-party code draws from
    torch.manual_seed(seed)
    generator.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: derive ``random`` and numpy seeds from the worker's torch
    seed, which the loader draws from its generator (so workers are reproducible too)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - as above, in the worker


def capture_rng(generator: torch.Generator) -> dict:
    """Every random state as tensors and plain Python values (loadable with weights_only)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 - checkpointed as is
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "key": key.tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data": generator.get_state(),
    }


def restore_rng(state: dict, generator: torch.Generator) -> None:
    """Inverse of :func:`capture_rng`."""
    random.setstate(_as_tuples(state["python"]))
    numpy = state["numpy"]
    np.random.set_state(  # noqa: NPY002 - restored as it was captured
        (
            numpy["kind"],
            np.asarray(numpy["key"], dtype=np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["data"])


def _as_tuples(value):
    """``random.setstate`` wants the nested tuples ``getstate`` gave, not lists."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(v) for v in value)
    return value


def job_hash(job: dict) -> str:
    """A fingerprint of a job's arguments (JSON-serialisable values): a partial checkpoint is
    resumed only by the job that wrote it."""
    return hashlib.sha256(json.dumps(job, sort_keys=True, default=str).encode()).hexdigest()


class RandomState:
    """Every random state of a job (:func:`capture_rng`) as a checkpointable object."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def state_dict(self) -> dict:
        return capture_rng(self.generator)

    def load_state_dict(self, state: dict) -> None:
        restore_rng(state, self.generator)


class LossStates:
    """The loss terms of a job (name -> module) as one checkpointable object: each term's
    state (a classifier's weights, its cameras) under its name."""

    def __init__(self, losses: dict) -> None:
        self.losses = losses

    def state_dict(self) -> dict:
        return {name: term.state_dict() for name, term in self.losses.items()}

    def load_state_dict(self, states: dict) -> None:
        for name, term in self.losses.items():
            term.load_state_dict(states[name])


class Checkpointer:
    """Saves and restores the objects it is given, by name.

    Each object has ``state_dict()`` and ``load_state_dict(state)`` (a model, an optimizer, a
    scheduler, :class:`LossStates`, :class:`RandomState`); the checkpoint holds each state
    under the object's name, as plain data that ``torch.load(weights_only=True)`` reads.
    """

    def __init__(self, **objects) -> None:
        self.objects = objects

    def state(self) -> dict:
        return {name: item.state_dict() for name, item in self.objects.items()}

    def restore(self, state: dict, names) -> None:
        """Load the states of ``names`` (in that order) from ``state``."""
        from pipeline.errors import PipelineError

        for name in names:
            if name not in state:
                raise PipelineError(f"the checkpoint holds no {name!r} to carry on from")
            self.objects[name].load_state_dict(state[name])
