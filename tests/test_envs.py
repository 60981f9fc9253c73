"""The conda environment file parses and names every package the pipeline imports.

Conda cannot run on the development machines (no conda, channels unreachable), so this is
what can be checked here: the file is valid YAML with pinned conda-forge packages, and every
third-party module imported anywhere under pipeline/ is provided by one of them.
"""

import ast
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# import name -> conda-forge (or pip) package name, where they differ
PACKAGE_OF_MODULE = {
    "torch": "pytorch",
    "sklearn": "scikit-learn",
    "PIL": "pillow",
    "yaml": "pyyaml",
    "faiss": "faiss-gpu",
    "matplotlib": "matplotlib-base",
}


def imported_modules() -> set[str]:
    modules = set()
    for path in (ROOT / "pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"pipeline", "__future__"}


def env_packages(env: dict) -> dict[str, str]:
    packages = {}
    for entry in env["dependencies"]:
        specs = entry["pip"] if isinstance(entry, dict) else [entry]
        for spec in specs:
            name, _, version = spec.replace("==", "=").partition("=")
            packages[name] = version
    return packages


def test_env_file_is_pinned_conda_forge():
    env = yaml.safe_load((ROOT / "envs" / "pipeline.yaml").read_text())
    assert env["channels"][0] == "conda-forge"
    packages = env_packages(env)
    unpinned = [name for name, version in packages.items() if not version]
    assert not unpinned, f"unpinned packages: {unpinned}"
    assert packages["pytorch"].endswith("=cuda*"), "rules need a CUDA build of PyTorch"


def test_env_file_provides_every_imported_package():
    packages = env_packages(yaml.safe_load((ROOT / "envs" / "pipeline.yaml").read_text()))
    needed = {PACKAGE_OF_MODULE.get(module, module) for module in imported_modules()}
    assert {"pytorch", "torchvision", "faiss-gpu", "infomap", "h5py"} <= needed
    missing = sorted(needed - set(packages))
    assert not missing, f"envs/pipeline.yaml lacks {missing}"


def test_every_rule_uses_the_env_file():
    for rules in (ROOT / "workflow" / "rules").glob("*.smk"):
        text = rules.read_text()
        n_rules = text.count("\nrule ") + text.count("\ncheckpoint ")
        assert n_rules == text.count("conda:\n        ENV"), f"{rules.name}: rule without conda"


# conda package -> the pip distribution of constraints.txt it stands for
PIP_OF_CONDA = {"pytorch": "torch", "faiss-gpu": "faiss-cpu", "matplotlib-base": "matplotlib"}


def test_env_file_pins_the_versions_ci_tests():
    constraints = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        constraints[name.strip().lower()] = version.strip()
    env = env_packages(yaml.safe_load((ROOT / "envs" / "pipeline.yaml").read_text()))
    compared = {
        name: (version.split("=")[0], constraints[PIP_OF_CONDA.get(name, name)])
        for name, version in env.items()
        if PIP_OF_CONDA.get(name, name) in constraints
    }
    assert {"pytorch", "torchvision", "faiss-gpu", "infomap", "pandas"} <= set(compared)
    differ = {name: pair for name, pair in compared.items() if pair[0] != pair[1]}
    assert not differ, f"envs/pipeline.yaml and constraints.txt disagree: {differ}"
