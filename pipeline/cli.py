"""`pipeline <stage>`: one command-line entry point with a subcommand per stage.

Each stage lives in ``pipeline/stages/<module>.py`` and exposes ``add_arguments(parser)`` and
``run(args)``; its module docstring's first line is the subcommand's help. Only the stage that
runs is imported (the others' help lines are read from their source), so a stage's code is
exactly its module and what that imports: the workflow reruns a stage when that code changes
(``workflow/rules/common.smk``), and nothing here is part of it.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import logging
import sys
from pathlib import Path

from pipeline import __version__
from pipeline.errors import PipelineError

# command names in pipeline order; each is the module pipeline.stages.<name with underscores>
STAGES = (
    "demo-data",
    "index",
    "weights",
    "init-model",
    "extract",
    "cluster-intra",
    "train-intra",
    "collect-local-labels",
    "ics-labels",
    "cluster-global",
    "refine",
    "train-inter",
    "evaluate",
    "compare",
    "report",
)
STAGES_DIR = Path(__file__).parent / "stages"


def module_name(stage: str) -> str:
    return "pipeline.stages." + stage.replace("-", "_")


def stage_help(stage: str) -> str | None:
    """The first line of a stage module's docstring, read without importing the module."""
    path = STAGES_DIR / (stage.replace("-", "_") + ".py")
    doc = ast.get_docstring(ast.parse(path.read_text()))
    return doc.strip().splitlines()[0] if doc else None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; the arguments of only the stage named in ``argv`` (every stage's when
    ``argv`` is None) are added, so only that stage's module is imported."""
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="CALR unsupervised person re-identification, one stage at a time.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    chosen = set(STAGES) if argv is None else set(argv) & set(STAGES)
    for name in STAGES:
        if name not in chosen:
            sub.add_parser(name, help=stage_help(name))
            continue
        module = importlib.import_module(module_name(name))
        doc = (module.__doc__ or "").strip().splitlines()
        stage_parser = sub.add_parser(
            name,
            help=doc[0] if doc else None,
            description="\n".join(doc) if doc else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(stage_parser)
        stage_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else [str(word) for word in argv]
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        args._run(args)
    except PipelineError as exc:
        print(f"pipeline {args.stage}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        # the shell's convention for a job ended by SIGINT: 128 + 2
        print(
            f"pipeline {args.stage}: interrupted; nothing half-written was kept, and rerunning "
            "the same command resumes (training from its last completed epoch)",
            file=sys.stderr,
        )
        sys.exit(130)
