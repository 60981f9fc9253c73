"""Running the workflow from tests: the tiny configuration, a killed run and its restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "workflow" / "tiny.yaml"
# the tiny run's results folder, relative to its working directory (a space, quotes, a ';')
TINY_RESULTS = Path(yaml.safe_load(TINY.read_text())["results"])
# where a shell command with unquoted paths would write (the results folder up to its space)
SENTINEL = Path(str(TINY_RESULTS).split(" ")[0])
SENTINEL_TEXT = "not a results folder: the workflow must never write here\n"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*SNAKEMAKE, "--directory", str(workdir), "--cores", "2", *args],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if check and result.returncode != 0:
        command = " ".join(args)
        raise AssertionError(f"snakemake {command} failed:\n{result.stdout}\n{result.stderr}")
    return result


@dataclass
class TinyRun:
    workdir: Path
    stamps_before_kill: dict
    stamps_after_restart: dict
    restart_output: str

    @property
    def results(self) -> Path:
        return self.workdir / TINY_RESULTS


def killed_then_restarted_run(workdir: Path) -> TinyRun:
    """Start the tiny workflow, SIGKILL it once its first jobs are done, and run it again.
    A file sits where unquoted paths in the rules' commands would write (:data:`SENTINEL`)."""
    (workdir / SENTINEL).parent.mkdir(parents=True, exist_ok=True)
    (workdir / SENTINEL).write_text(SENTINEL_TEXT)
    shared = workdir / TINY_RESULTS / "shared"
    proc = subprocess.Popen(
        [*SNAKEMAKE, "--directory", str(workdir), "--cores", "2", "--configfile", str(TINY)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    finished = [shared / "index.csv", shared / "model_init.pt"]
    # Snakemake records a job as complete before it starts the jobs that need its output: once
    # the initial features exist, the index and initial model jobs are finished for good
    started_later = shared / "model_init.train.h5"
    deadline = time.time() + 600
    while not started_later.exists() and time.time() < deadline:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert all(p.exists() for p in finished), "the run did not get going"
    before = {p: p.stat().st_mtime_ns for p in finished}
    # a killed Snakemake leaves its lock behind: the user's first step is --unlock
    snakemake(workdir, "--configfile", str(TINY), "--unlock")
    restart = snakemake(workdir, "--configfile", str(TINY), "--rerun-incomplete")
    after = {p: p.stat().st_mtime_ns for p in finished}
    return TinyRun(workdir, before, after, restart.stdout + restart.stderr)
