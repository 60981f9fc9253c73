"""Fixtures shared by the whole suite: a small demo dataset and the real-image subset."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.data.demo import DemoConfig
from pipeline.stages.demo_data import write_demo_dataset

# small enough to draw in about a second; every training camera has at least 15 images
DEMO_CONFIG = DemoConfig(seed=0, identities=24, cameras=6, height=128, width=64)
MARKET_SUBSET = Path(__file__).resolve().parents[2] / "shared/data/market1501-hq-subset"


@pytest.fixture(scope="session")
def demo_config() -> DemoConfig:
    """The parameters :func:`demo_root` was drawn with."""
    return DEMO_CONFIG


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory, demo_config: DemoConfig) -> Path:
    """Demo dataset in Market-1501 layout, drawn once per session (24 identities, 6 cameras).

    Read-only for tests: copy it before changing anything in it.
    """
    root = tmp_path_factory.mktemp("demo-data") / "demo"
    write_demo_dataset(root, demo_config)
    return root


@pytest.fixture
def market_subset_root() -> Path:
    """The real Market-1501 subset in ../shared/data (see its PROVENANCE.md)."""
    if not MARKET_SUBSET.is_dir():
        pytest.skip(f"real-image subset not found at {MARKET_SUBSET}; it lives outside the repo")
    return MARKET_SUBSET


@pytest.fixture(scope="session")
def tiny_workflow(tmp_path_factory):
    """The tiny workflow, killed once part-way and restarted to completion (shared by the
    workflow and SLURM tests, which compare against it)."""
    from tests.workflow_runs import killed_then_restarted_run

    return killed_then_restarted_run(tmp_path_factory.mktemp("workflow"))
