"""Compare experiments: the final metrics of each metrics.csv in one table (Table III style).

Writes --out (CSV or parquet, metrics as fractions), optionally --markdown (percentages with one
decimal, plus the software versions and the configuration file that produced the results) and
prints the table. Each metrics file contributes the rows of its last evaluated model.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics", required=True, nargs="+", type=Path, help="metrics.csv of each experiment"
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="comparison table to write (.csv or .parquet)"
    )
    parser.add_argument("--markdown", type=Path, default=None, help="Markdown version to write")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="workflow configuration file to quote in the Markdown",
    )


def comparison_markdown(
    table: pd.DataFrame, versions: dict[str, str], config: tuple[Path, str] | None
) -> str:
    """The comparison as a Markdown document: the table in percent, the software versions and
    the configuration file's text (``config`` = (path, text), or None)."""
    from pipeline.report.tables import display_table, markdown_table

    software = pd.DataFrame({"software": list(versions), "version": list(versions.values())})
    parts = [
        "# Comparison of experiments",
        "",
        "Final model of each experiment; metrics in % on the query/gallery protocol.",
        "",
        markdown_table(display_table(table)),
        "## Software",
        "",
        markdown_table(software),
        "## Configuration",
        "",
    ]
    if config is None:
        parts.append("Not given (option --config).\n")
    else:
        path, text = config
        parts += [f"`{path}`:", "", "```yaml", text.rstrip("\n"), "```", ""]
    return "\n".join(parts)


def run(args: argparse.Namespace) -> None:
    from pipeline.io import atomic_output, write_table
    from pipeline.report.provenance import software_versions
    from pipeline.report.tables import comparison_table, display_table
    from pipeline.tables import METRICS

    config = None
    if args.config is not None:
        if not args.config.is_file():
            raise PipelineError(f"{args.config}: configuration file not found (option --config)")
        config = (args.config, args.config.read_text())
    tables = [METRICS.read(path) for path in args.metrics]
    table = comparison_table(tables, [str(path) for path in args.metrics])
    write_table(table, args.out)
    if args.markdown is not None:
        text = comparison_markdown(table, software_versions(), config)
        with atomic_output(args.markdown) as tmp:
            tmp.write_text(text)
    print(display_table(table).to_string(index=False))
    log.info("compared %d experiment(s) into %s", len(args.metrics), args.out)
