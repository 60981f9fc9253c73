"""One GPU per job when several GPU jobs share a workstation: slots claimed with file locks.

With ``resources: gpu=N`` Snakemake runs up to N GPU jobs at once, but nothing tells a job which
GPU to use, so every one of them lands on GPU 0. Wrapping a job's command in

    python -m pipeline.devices run -- python -m pipeline extract ...

gives it a GPU of its own: ``run`` claims the first free slot ``i`` of N (N = ``--slots``,
default: the number of visible GPUs) by taking an exclusive lock (``fcntl.flock``) on the file
``gpu-slot-<i>.lock`` in ``--slot-dir``, sets ``CUDA_VISIBLE_DEVICES`` to the ``i``-th visible
GPU, and replaces itself with the command (``exec``), which inherits the open lock file. The
slot is therefore held exactly as long as the job and the processes it starts (DataLoader
workers, the processes of a multi-GPU training job) run, and the kernel releases it when the
last of them exits, however they end (SIGKILL included): nothing needs cleaning up, and a lock
file left behind is free. When all slots are taken (another workflow on the same machine, or a
job's workers still exiting), it waits for one (``--wait`` seconds, default without limit). A
job that needs several GPUs (``--gpus K``, a training job with ``train.gpus: K``) claims K slots
at once, all or none: when fewer are free it releases those it took and waits, so that two
jobs that each need two of three GPUs never hold one each forever.

The visible GPUs are those listed in ``CUDA_VISIBLE_DEVICES`` when it is set (so a user can hand
the workflow a subset, ``CUDA_VISIBLE_DEVICES=2,3``), else the ``/dev/nvidia<n>`` devices.
Without any GPU, or with ``--gpus 0``, the command runs unchanged, so the same rules serve CPU
hosts and jobs that need no GPU in a GPU configuration. Under SLURM (``SLURM_JOB_ID`` set) the
scheduler already gives each job its own GPUs through ``CUDA_VISIBLE_DEVICES`` (the profile
maps the rules' ``gpu`` resource to ``--gpus``), and a slot directory could be shared by
several nodes, so the command runs unchanged there too.

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


def claim_slots(
    slot_dir: Path, slots: int, count: int = 1, wait: float | None = None
) -> list[tuple[int, int]]:
    """Lock ``count`` free slots of the ``slots`` slot files in ``slot_dir``, all or none:
    ``[(slot, file descriptor), ...]`` in slot order.

    A slot is held until its descriptor is closed in every process that has it (the owner
    exiting closes it). Waits for enough free slots up to ``wait`` seconds (None: without
    limit); then raises :class:`PipelineError` naming the holders.
    """
    if slots < 1:
        raise PipelineError(f"the number of GPU slots must be at least 1, got {slots}")
    if not 1 <= count <= slots:
        raise PipelineError(
            f"the job asks for {count} GPU(s) (--gpus) but there are {slots} GPU slot(s); ask "
            "for at most that many (train.gpus)"
        )
    slot_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if wait is None else time.monotonic() + wait
    while True:
        taken = []
        for slot in range(slots):
            path = slot_dir / f"gpu-slot-{slot}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            taken.append((slot, fd))
            if len(taken) == count:
                for _, held in taken:
                    os.ftruncate(held, 0)
                    os.write(held, f"{os.getpid()}\n".encode())
                return taken
        for _, fd in taken:  # too few free: let the others have them while this job waits
            os.close(fd)
        if deadline is not None and time.monotonic() >= deadline:
            holders = ", ".join(
                f"slot {s}: pid {_holder(slot_dir / f'gpu-slot-{s}.lock')}" for s in range(slots)
            )
            raise PipelineError(
                f"no {count} free GPU slot(s) in {slot_dir} after {wait:g} s ({holders}); wait "
                "for those jobs, or raise --slots if the machine has more GPUs"
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
    gpus: int = 1,
) -> NoReturn:
    """Claim ``gpus`` slots, point ``CUDA_VISIBLE_DEVICES`` at their GPUs and exec ``command``
    (module docstring); exec it unchanged under SLURM, without GPUs or when ``gpus`` is 0. Does
    not return."""
    env = dict(os.environ if environ is None else environ)
    visible = visible_gpus(env)
    if "SLURM_JOB_ID" in env or gpus == 0 or (slots is None and not visible):
        os.execvpe(command[0], command, env)
    slots = len(visible) if slots is None else slots
    if slots > len(visible):
        raise PipelineError(
            f"--slots {slots} but only {len(visible)} GPU(s) are visible "
            f"({','.join(visible) or 'none'}); use at most that many, or set "
            "CUDA_VISIBLE_DEVICES to the GPUs to use"
        )
    claimed = claim_slots(slot_dir, slots, gpus, wait)
    for _, fd in claimed:
        os.set_inheritable(fd, True)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(visible[slot] for slot, _ in claimed)
    print(
        f"pipeline.devices: GPU slot(s) {', '.join(str(slot) for slot, _ in claimed)} of {slots}"
        f" -> CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}",
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
        "--slots", type=int, default=None, help="GPUs shared out (default: the visible ones)"
    )
    run_parser.add_argument(
        "--gpus", type=int, default=1, help="GPUs the command needs (default: 1)"
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
        run(command, args.slots, args.slot_dir, args.wait, gpus=args.gpus)
    except PipelineError as error:
        print(f"pipeline.devices: error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:  # the command could not be started
        print(f"pipeline.devices: error: cannot run {command[0]!r}: {error}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main()
