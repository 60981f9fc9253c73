"""A stage's code is found from its imports and tracked by content (pipeline/sources.py)."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.sources import code_hash, stage_sources

ROOT = Path(__file__).resolve().parents[1]


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def package(tmp_path: Path) -> Path:
    write(
        tmp_path,
        {
            "pipeline/__init__.py": "",
            "pipeline/cli.py": "import pipeline.stages.a\n",
            "pipeline/errors.py": "",
            "pipeline/stages/__init__.py": "",
            "pipeline/stages/a.py": (
                "from pipeline.errors import Error\n"
                "def run():\n    from pipeline.lib import helper\n"
            ),
            "pipeline/stages/b.py": "from . import c\n",
            "pipeline/stages/c.py": "import json\n",
            "pipeline/lib/__init__.py": "from .deep import x\n",
            "pipeline/lib/helper.py": "",
            "pipeline/lib/deep.py": "",
            "pipeline/lib/unused.py": "",
        },
    )
    return tmp_path


def test_sources_follow_imports_at_any_depth_and_packages_on_the_way(tmp_path):
    root = package(tmp_path)
    found = {str(p.relative_to(root)) for p in stage_sources(root, "pipeline.stages.a")}
    assert found == {
        "pipeline/__init__.py",
        "pipeline/errors.py",
        "pipeline/stages/__init__.py",
        "pipeline/stages/a.py",
        "pipeline/lib/__init__.py",
        "pipeline/lib/helper.py",
        "pipeline/lib/deep.py",
    }
    relative = {str(p.relative_to(root)) for p in stage_sources(root, "pipeline.stages.b")}
    assert "pipeline/stages/c.py" in relative and "pipeline/cli.py" not in relative


def test_hash_changes_with_content_only(tmp_path):
    root = package(tmp_path)
    before = code_hash(root, "pipeline.stages.a")
    for path in root.rglob("*.py"):
        os.utime(path, (1, 1))
    assert code_hash(root, "pipeline.stages.a") == before
    (root / "pipeline/lib/unused.py").write_text("x = 1\n")
    assert code_hash(root, "pipeline.stages.a") == before
    (root / "pipeline/lib/deep.py").write_text("x = 1\n")
    assert code_hash(root, "pipeline.stages.a") != before


def test_the_real_stages_track_what_the_issue_found_missing():
    def sources(stage: str) -> set[str]:
        return {str(p.relative_to(ROOT)) for p in stage_sources(ROOT, f"pipeline.stages.{stage}")}

    assert {"pipeline/report/tables.py", "pipeline/report/provenance.py"} <= sources("compare")
    assert "pipeline/features/extract.py" in sources("init_model")
    assert "pipeline/stages/cluster_global.py" in sources("refine")
    assert not any(path.endswith("cli.py") for path in sources("train_inter"))
