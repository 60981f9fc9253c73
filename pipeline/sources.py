"""The source files a stage runs, found from its imports, and a hash of their content.

The workflow passes each rule the hash of its stage's code as a parameter, so Snakemake reruns
a stage exactly when code it runs changed: a ``touch`` or a checkout that changes nothing reruns
nothing, a new import is tracked without editing a list, and an edit reruns only the stages
whose module imports the edited file (directly or through other modules). Imports are read from
the source (anywhere in a file, so the imports stage modules make inside ``run()`` count), never
executed: the Snakemake process imports no PyTorch. The entry point ``pipeline/cli.py`` only
dispatches to the stage and is not part of any stage's code.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGE = "pipeline"


def module_file(root: Path, module: str) -> Path | None:
    """The file of ``module`` (dotted) under ``root``: a module file or a package's __init__."""
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(path: Path, module: str) -> set[str]:
    """The ``pipeline`` modules a source file imports (absolute or relative, at any depth),
    including ``from package import submodule`` forms."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}


@cache
def stage_sources(root: Path, module: str) -> tuple[Path, ...]:
    """Every file of the ``pipeline`` package that running ``module`` executes: the module, what
    it imports, recursively, and the ``__init__`` of every package on the way; sorted."""
    seen: set[str] = set()
    files: set[Path] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(root, name)
        if path is None:
            continue  # a name imported from a module, not a module of its own
        files.add(path)
        parents = name.split(".")
        pending += [".".join(parents[:i]) for i in range(1, len(parents))]
        pending += sorted(imported_modules(path, name))
    return tuple(sorted(files))


def code_hash(root: str | Path, module: str) -> str:
    """sha256 over the relative paths and contents of :func:`stage_sources` (hex, 16 digits:
    a parameter that changes exactly when the code a stage runs changes)."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in stage_sources(root, module):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
