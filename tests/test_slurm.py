"""The workflow on a real one-node SLURM cluster, through a profile derived from profiles/slurm.

The cluster is started from Debian's packages by tests/slurm/slurm-local.sh (root needed) and
stopped at the end if this test started it. Stage 1 and the first round of stage 2 run through
sbatch and must agree with the local run of the same configuration.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.workflow_runs import TINY, TINY_RESULTS, snakemake

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "slurm" / "slurm-local.sh"
PROFILE = ROOT / "tests" / "profiles" / "slurm-local"

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


def test_workflow_through_slurm_matches_a_local_run(slurm_cluster, tiny_workflow, tmp_path):
    """Stage 1 and the first round of stage 2 through sbatch, against the local tiny run."""
    results = TINY_RESULTS
    target = results / "calr" / "seed0" / "round0" / "model.pt"
    result = snakemake(tmp_path, "--configfile", str(TINY), "--profile", str(PROFILE), str(target))

    output = result.stdout + result.stderr
    submitted = output.count("has been submitted with SLURM jobid")
    assert submitted >= 8, f"expected the jobs to go through sbatch:\n{output}"
    slurm_logs = list((tmp_path / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert len(slurm_logs) == submitted
    # the round's global clustering and refinement went as one submission (group: round)
    assert "Group job round" in output
    assert any(log.parent.name.startswith("group_round") for log in slurm_logs), slurm_logs

    local = tiny_workflow.workdir
    for name in [
        "shared/index.csv",
        *(f"shared/seed0/intra/cam{cam}/local_labels.csv" for cam in (1, 2, 3)),
        "calr/seed0/round0/clusters.csv",
        "calr/seed0/round0/refined.csv",
    ]:
        left = pd.read_csv(local / results / name)
        right = pd.read_csv(tmp_path / results / name)
        if "path" in left:  # absolute image paths differ by working directory
            left["path"] = left["path"].str.replace(str(local), "", regex=False)
            right["path"] = right["path"].str.replace(str(tmp_path), "", regex=False)
        pd.testing.assert_frame_equal(left, right, obj=name)
    losses = ["loss_contrastive", "loss_camera", "loss_total", "n_clusters", "n_train_samples"]
    pd.testing.assert_frame_equal(
        pd.read_csv(local / results / "calr/seed0/round0/train_log.csv")[losses],
        pd.read_csv(tmp_path / results / "calr/seed0/round0/train_log.csv")[losses],
        rtol=1e-4,
    )
