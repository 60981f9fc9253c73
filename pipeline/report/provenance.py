"""How a result was produced: software versions and the code's git commit."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

import pipeline

# (name shown, distributions that provide it, first installed wins)
PACKAGES = (
    ("torch", ("torch",)),
    ("torchvision", ("torchvision",)),
    ("faiss", ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss")),
    ("infomap", ("infomap",)),
    ("scikit-learn", ("scikit-learn",)),
    ("numpy", ("numpy",)),
    ("pandas", ("pandas",)),
    ("snakemake", ("snakemake",)),
)
NOT_INSTALLED = "not installed"


def package_version(distributions: tuple[str, ...]) -> str:
    """Version of the first installed distribution among ``distributions``, named when it is
    not the first (``1.15.1 (faiss-cpu)``)."""
    for name in distributions:
        try:
            return metadata.version(name) + (f" ({name})" if len(distributions) > 1 else "")
        except metadata.PackageNotFoundError:
            continue
    return NOT_INSTALLED


def git_commit() -> str:
    """The commit of the checkout the pipeline package runs from, or ``unavailable`` (an
    installed copy, or no git)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(pipeline.__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unavailable"
    return result.stdout.strip()


def software_versions() -> dict[str, str]:
    """Python, the pipeline (version and git commit) and the packages results depend on."""
    versions = {
        "python": platform.python_version(),
        "pipeline": pipeline.__version__,
        "git commit": git_commit(),
    }
    versions.update({name: package_version(dists) for name, dists in PACKAGES})
    return versions
