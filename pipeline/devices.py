"""One GPU per job when several GPU jobs share a workstation: slots claimed with file locks.

With ``resources: gpu=N`` Snakemake runs up to N GPU jobs at once, but nothing tells a job which
GPU to use, so every one of them lands on GPU 0. Wrapping a job's command in

    python -m pipeline.devices run -- python -m pipeline extract ...

gives it a GPU of its own: ``run`` claims the first free slot ``i`` of N (N = ``--slots``,
default: the number of visible GPUs) by taking an exclusive lock (``fcntl.flock``) on the file
``gpu-slot-<i>.lock`` in ``--slot-dir``, sets ``CUDA_VISIBLE_DEVICES`` to the ``i``-th visible
GPU, and replaces itself with the command (``exec``), which inherits the open lock file. The
slot is therefore held exactly as long as the job and the processes it forks (DataLoader
workers) run, and the kernel releases it when the last of them exits, however they end
(SIGKILL included): nothing needs cleaning up, and a lock file left behind is free. When all
slots are taken (another workflow on the same machine, or a job's workers still exiting), it
waits for one (``--wait`` seconds, default without limit).

The visible GPUs are those listed in ``CUDA_VISIBLE_DEVICES`` when it is set (so a user can hand
the workflow a subset, ``CUDA_VISIBLE_DEVICES=2,3``), else the ``/dev/nvidia<n>`` devices.
Without any GPU the command runs unchanged, so the same rules serve CPU hosts. Under SLURM
(``SLURM_JOB_ID`` set) the scheduler already gives each job its own GPUs through
``CUDA_VISIBLE_DEVICES`` (the profile maps the rules' ``gpu`` resource to ``--gpus``), and a
slot directory could be shared by several nodes, so the command runs unchanged there too.

Slots are per machine and per slot directory: the default, ``$TMPDIR/calr-gpu-slots-<uid>``,
is private to one user; users who share GPUs can share a directory with ``--slot-dir``.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

from pipeline.errors import PipelineError

DEFAULT_SLOT_DIR = Path(tempfile.gettempdir()) / f"calr-gpu-slots-{os.getuid()}"
POLL_SECONDS = 0.2


def visible_gpus(environ: dict[str, str] | None = None, dev: Path = Path("/dev")) -> list[str]:
    """The GPUs a job may be given, as ``CUDA_VISIBLE_DEVICES`` entries.

    The entries of ``CUDA_VISIBLE_DEVICES`` when it is set (indices or UUIDs; empty: none),
    else the numbers of the ``/dev/nvidia<n>`` device files, ascending.
    """
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        return [g.strip() for g in environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    numbers = [
        int(m[1]) for p in dev.glob("nvidia*") if (m := re.fullmatch(r"nvidia(\d+)", p.name))
    ]
    return [str(n) for n in sorted(numbers)]


def claim_slot(slot_dir: Path, slots: int, wait: float | None = None) -> tuple[int, int]:
    """Lock the first free of ``slots`` slot files in ``slot_dir``: ``(slot, file descriptor)``.

    The slot is held until the descriptor is closed in every process that has it (the owner
    exiting closes it). Waits for a free slot up to ``wait`` seconds (None: without limit);
    then raises :class:`PipelineError` naming the holders.
    """
    if slots < 1:
        raise PipelineError(f"the number of GPU slots must be at least 1, got {slots}")
    slot_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if wait is None else time.monotonic() + wait
    while True:
        for slot in range(slots):
            path = slot_dir / f"gpu-slot-{slot}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return slot, fd
        if deadline is not None and time.monotonic() >= deadline:
            holders = ", ".join(
                f"slot {s}: pid {_holder(slot_dir / f'gpu-slot-{s}.lock')}" for s in range(slots)
            )
            raise PipelineError(
                f"no free GPU slot in {slot_dir} after {wait:g} s ({holders}); wait for those "
                "jobs, or raise --slots if the machine has more GPUs"
            )
        time.sleep(POLL_SECONDS)


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def run(
    command: list[str],
    slots: int | None,
    slot_dir: Path,
    wait: float | None,
    environ: dict[str, str] | None = None,
) -> NoReturn:
    """Claim a slot, point ``CUDA_VISIBLE_DEVICES`` at its GPU and exec ``command`` (module
    docstring); exec it unchanged under SLURM or without GPUs. Does not return."""
    env = dict(os.environ if environ is None else environ)
    gpus = visible_gpus(env)
    if "SLURM_JOB_ID" in env or (slots is None and not gpus):
        os.execvpe(command[0], command, env)
    slots = len(gpus) if slots is None else slots
    if slots > len(gpus):
        raise PipelineError(
            f"--slots {slots} but only {len(gpus)} GPU(s) are visible ({','.join(gpus) or 'none'}"
            "); use at most that many, or set CUDA_VISIBLE_DEVICES to the GPUs to use"
        )
    slot, fd = claim_slot(slot_dir, slots, wait)
    os.set_inheritable(fd, True)
    env["CUDA_VISIBLE_DEVICES"] = gpus[slot]
    print(
        f"pipeline.devices: GPU slot {slot} of {slots} -> CUDA_VISIBLE_DEVICES={gpus[slot]}",
        file=sys.stderr,
        flush=True,
    )
    os.execvpe(command[0], command, env)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.devices", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="verb", required=True)
    run_parser = sub.add_parser("run", help="run a command on a GPU of its own")
    run_parser.add_argument(
        "--slots", type=int, default=None, help="GPU jobs at once (default: visible GPUs)"
    )
    run_parser.add_argument("--slot-dir", type=Path, default=DEFAULT_SLOT_DIR)
    run_parser.add_argument(
        "--wait", type=float, default=None, help="seconds to wait for a slot (default: no limit)"
    )
    run_parser.add_argument("command", nargs=argparse.REMAINDER, help="-- command and arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    try:
        run(command, args.slots, args.slot_dir, args.wait)
    except PipelineError as error:
        print(f"pipeline.devices: error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:  # the command could not be started
        print(f"pipeline.devices: error: cannot run {command[0]!r}: {error}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main()
