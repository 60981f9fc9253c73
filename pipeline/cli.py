"""`pipeline <stage>`: one command-line entry point with a subcommand per stage.

Each stage lives in ``pipeline/stages/<module>.py`` and exposes ``add_arguments(parser)`` and
``run(args)``; its module docstring's first line is the subcommand's help. Stage modules import
heavy packages (torch, faiss, infomap) inside ``run`` so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pipeline import __version__
from pipeline.errors import PipelineError

# command name -> module under pipeline.stages, in pipeline order
STAGES: dict[str, str] = {
    "demo-data": "demo_data",
    "index": "index",
    "weights": "weights",
    "init-model": "init_model",
    "extract": "extract",
    "cluster-intra": "cluster_intra",
    "train-intra": "train_intra",
    "collect-local-labels": "collect_local_labels",
    "cluster-global": "cluster_global",
    "refine": "refine",
    "train-inter": "train_inter",
    "evaluate": "evaluate",
    "compare": "compare",
    "report": "report",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="CALR unsupervised person re-identification, one stage at a time.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for name, module_name in STAGES.items():
        module = importlib.import_module(f"pipeline.stages.{module_name}")
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
    args = build_parser().parse_args(argv)
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
