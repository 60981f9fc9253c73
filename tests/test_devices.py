"""pipeline.devices: GPU slots by file lock, CUDA_VISIBLE_DEVICES per job, release on kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.devices import claim_slots, visible_gpus
from pipeline.errors import PipelineError

ROOT = Path(__file__).resolve().parents[1]
# a job that writes the GPU it was given to <argv[1]>, then holds it until <argv[2]> exists
HOLD = (
    "import os, sys, time, pathlib; "
    "pathlib.Path(sys.argv[1]).write_text(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')); "
    "exec('while not os.path.exists(sys.argv[2]): time.sleep(0.02)')"
)


def wrapped(
    slot_dir: Path, *command: str, slots: int | None = 2, env: dict | None = None, gpus: int = 1
):
    """``python -m pipeline.devices run`` around ``command``, started in the background."""
    options = ["--slot-dir", str(slot_dir), "--gpus", str(gpus)]
    options += [] if slots is None else ["--slots", str(slots)]
    environ = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"}
    environ.update({"PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "5,7", **(env or {})})
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.devices", "run", *options, "--", *command],
        env=environ,
        stderr=subprocess.PIPE,
        text=True,
    )


def hold(slot_dir, out, release, **kwargs):
    return wrapped(slot_dir, sys.executable, "-c", HOLD, str(out), str(release), **kwargs)


def wait_for(condition, seconds=30):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_visible_gpus_come_from_cuda_visible_devices_else_dev(tmp_path):
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    for name in ("nvidia10", "nvidia2", "nvidiactl", "nvidia-uvm", "nvidia0"):
        (tmp_path / name).touch()
    assert visible_gpus({}, dev=tmp_path) == ["0", "2", "10"]


def test_concurrent_jobs_never_share_a_gpu(tmp_path):
    # three jobs on two slots: two start on GPUs 5 and 7, the third waits for a free one
    outs, release = [tmp_path / f"job{i}.gpu" for i in range(3)], tmp_path / "release"
    jobs = [hold(tmp_path / "slots", out, release) for out in outs]
    wait_for(lambda: sum(out.exists() for out in outs) >= 2)
    time.sleep(0.5)
    started = [out.read_text() for out in outs if out.exists()]
    assert sorted(started) == ["5", "7"]
    release.touch()
    assert [job.wait(timeout=30) for job in jobs] == [0, 0, 0]
    assert all(out.read_text() in ("5", "7") for out in outs)


def test_a_killed_job_releases_its_slot(tmp_path):
    slot_dir = tmp_path / "slots"
    holder = wrapped(slot_dir, "sleep", "60", slots=1)
    try:
        wait_for(lambda: (slot_dir / "gpu-slot-0.lock").exists() and not _free(slot_dir))
        with pytest.raises(
            PipelineError, match=rf"no 1 free GPU slot\(s\) .*\(slot 0: pid {holder.pid}\)"
        ):
            claim_slots(slot_dir, 1, wait=0.3)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        [(slot, fd)] = claim_slots(slot_dir, 1, wait=5)
        os.close(fd)
        assert slot == 0
    finally:
        holder.kill()


def _free(slot_dir: Path) -> bool:
    try:
        [(_, fd)] = claim_slots(slot_dir, 1, wait=0)
    except PipelineError:
        return False
    os.close(fd)
    return True


def test_a_multi_gpu_job_takes_all_its_slots_or_none(tmp_path):
    two = claim_slots(tmp_path, 3, count=2)
    assert [slot for slot, _ in two] == [0, 1]
    # one slot is free: a second two-GPU job takes none (and leaves it to a one-GPU job)
    with pytest.raises(PipelineError, match="no 2 free GPU slot"):
        claim_slots(tmp_path, 3, count=2, wait=0.2)
    [(slot, fd)] = claim_slots(tmp_path, 3, count=1, wait=0)
    assert slot == 2
    for _, held in [*two, (slot, fd)]:
        os.close(held)
    with pytest.raises(PipelineError, match=r"asks for 4 GPU\(s\) \(--gpus\) but there are 3"):
        claim_slots(tmp_path, 3, count=4)


def test_a_multi_gpu_job_sees_its_gpus(tmp_path):
    (tmp_path / "release").touch()
    job = hold(tmp_path / "slots", tmp_path / "out", tmp_path / "release", gpus=2)
    assert job.wait(timeout=30) == 0
    assert (tmp_path / "out").read_text() == "5,7"


@pytest.mark.parametrize(
    ("env", "slots", "expected"),
    [
        ({"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "3"}, 2, "3"),  # SLURM isolates
        ({"CUDA_VISIBLE_DEVICES": ""}, None, ""),  # no GPU: the command runs as it is
    ],
)
def test_slurm_jobs_and_cpu_hosts_run_the_command_unchanged(tmp_path, env, slots, expected):
    (tmp_path / "release").touch()
    job = hold(tmp_path / "slots", tmp_path / "out", tmp_path / "release", slots=slots, env=env)
    assert job.wait(timeout=30) == 0
    assert (tmp_path / "out").read_text() == expected
    assert not (tmp_path / "slots").exists()


def test_more_slots_than_gpus_is_an_error(tmp_path):
    job = wrapped(tmp_path, "true", slots=3)
    _, err = job.communicate(timeout=30)
    assert job.returncode == 2
    assert "--slots 3 but only 2 GPU(s) are visible (5,7)" in err
