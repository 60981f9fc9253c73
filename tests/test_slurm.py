"""The workflow on a real one-node SLURM cluster, through a profile derived from profiles/slurm.

The cluster is started from Debian's packages by tests/slurm/slurm-local.sh (root needed) and
stopped at the end if this test started it. The same configuration also runs locally, and the
two runs must agree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "slurm" / "slurm-local.sh"
PROFILE = ROOT / "tests" / "profiles" / "slurm-local"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def slurm_running() -> bool:
    return shutil.which("sinfo") is not None and (
        subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0
    )


@pytest.fixture(scope="module")
def slurm_cluster():
    if slurm_running():
        yield
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("the local SLURM cluster needs root and Debian's apt-get to install it")
    start = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True)
    assert start.returncode == 0, f"slurm-local.sh start failed:\n{start.stderr}"
    yield
    subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True)


def run(workdir: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*SNAKEMAKE, "--directory", str(workdir), "--configfile", str(config), *args],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, f"snakemake failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_workflow_through_slurm_matches_a_local_run(slurm_cluster, tmp_path):
    config = yaml.safe_load((ROOT / "tests" / "workflow" / "tiny.yaml").read_text())
    config["experiments"] = {"calr": {}}
    config["inter"]["epochs"] = 1
    config_file = tmp_path / "slurm.yaml"
    config_file.write_text(yaml.safe_dump(config))

    local, cluster = tmp_path / "local", tmp_path / "cluster"
    run(local, config_file, "--cores", "2")
    result = run(cluster, config_file, "--profile", str(PROFILE))

    output = result.stdout + result.stderr
    submitted = output.count("has been submitted with SLURM jobid")
    assert submitted >= 10, f"expected the jobs to go through sbatch:\n{output}"
    slurm_logs = list((cluster / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert len(slurm_logs) == submitted

    results = Path("results") / "tiny"
    same_files = [
        "shared/index.csv",
        "shared/intra/cam1/local_labels.csv",
        "calr/round0/clusters.csv",
        "calr/round0/refined.csv",
    ]
    for name in same_files:
        left = pd.read_csv(local / results / name)
        right = pd.read_csv(cluster / results / name)
        if name == "shared/index.csv":  # absolute image paths differ by working directory
            left["path"] = left["path"].str.replace(str(local), "")
            right["path"] = right["path"].str.replace(str(cluster), "")
        pd.testing.assert_frame_equal(left, right, obj=name)
    metrics = ["mAP", "rank1", "rank5", "rank10", "mINP"]
    pd.testing.assert_frame_equal(
        pd.read_csv(local / results / "comparison.csv")[metrics],
        pd.read_csv(cluster / results / "comparison.csv")[metrics],
        atol=1e-6,
    )
