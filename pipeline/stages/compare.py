"""Compare experiments: every run's per-query scores into the comparison with uncertainty.

Each run is one evaluated model: its metrics table (--metrics, which records its experiment and
seed) and its per-query table (--per-query, the same order). Runs of one experiment with
several seeds are replicates; an experiment named by --shared ran once for all seeds (the
initial model). Per experiment: mean and standard deviation over seeds of mAP, rank-1, rank-5
and mINP; per run a bootstrap interval over query identities; per experiment against the
baseline the paired difference with its interval and the verdict it gives
(pipeline/report/replicates.py, pipeline/evaluate/uncertainty.py).

Writes --out (one row per experiment, metrics as fractions), optionally the per-run and
per-difference tables, the comparison as Markdown and as an HTML page (both with the software
versions and the configuration file that produced the results), as console text, and the plot
of each experiment's runs; prints the console text.
"""

from __future__ import annotations

import argparse
import html
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline import settings
from pipeline.errors import PipelineError
from pipeline.settings import setting
from pipeline.tables import COMPARED_METRICS

if TYPE_CHECKING:  # the report modules import matplotlib and SciPy: only inside run()
    import pandas as pd

    from pipeline.evaluate.metrics import QueryScores
    from pipeline.report.replicates import ReplicateTables

log = logging.getLogger(__name__)

# mAP of a run's metrics table and of its per-query table: equal up to rounding in the CSV
AGREEMENT = 1e-9


@dataclass(frozen=True)
class CompareOptions:
    """The comparison of experiments: the baseline and the uncertainty of each difference."""

    baseline: str = setting(
        "baseline", "experiment every other is compared against (paired by seed)"
    )
    metric: str = setting(
        "mAP",
        "metric whose difference and verdict each experiment's row shows",
        choices=COMPARED_METRICS,
    )
    bootstrap_resamples: int = setting(
        2000, "bootstrap resamples of the query identities per interval", minimum=100
    )
    bootstrap_seed: int = setting(0, "seed of the bootstrap's draws", minimum=0)
    confidence: float = setting(
        0.95, "level of every interval", exclusive_minimum=0, exclusive_maximum=1
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics",
        required=True,
        nargs="+",
        type=Path,
        help="metrics.csv of each run (it records the run's experiment and seed)",
    )
    parser.add_argument(
        "--per-query",
        required=True,
        nargs="+",
        type=Path,
        help="per-query table of each run, in the order of --metrics",
    )
    parser.add_argument(
        "--shared",
        nargs="*",
        default=[],
        help="experiments evaluated once for all seeds (the initial model)",
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="comparison table to write (.csv or .parquet)"
    )
    parser.add_argument("--runs-table", type=Path, default=None, help="per-run table to write")
    parser.add_argument(
        "--differences-table", type=Path, default=None, help="per-difference table to write"
    )
    parser.add_argument("--markdown", type=Path, default=None, help="Markdown version to write")
    parser.add_argument("--html", type=Path, default=None, help="HTML page to write")
    parser.add_argument("--text", type=Path, default=None, help="console text to write")
    parser.add_argument("--plot", type=Path, default=None, help="plot of the runs to write")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="workflow configuration file to quote in the Markdown and HTML",
    )
    settings.add_arguments(parser, CompareOptions, "comparison")


def read_runs(
    metrics_paths: list[Path], per_query_paths: list[Path]
) -> dict[str, dict[int, QueryScores]]:
    """experiment -> seed -> per-query scores of the runs, in the order given; each run's
    experiment and seed come from its metrics table, whose figures must be its per-query
    table's."""
    from pipeline.report.replicates import query_scores
    from pipeline.report.tables import final_metrics
    from pipeline.tables import METRICS, PER_QUERY

    if len(metrics_paths) != len(per_query_paths):
        raise PipelineError(
            f"{len(metrics_paths)} metrics table(s) but {len(per_query_paths)} per-query "
            "table(s); pass one of each per run, in the same order (--metrics, --per-query)"
        )
    runs: dict[str, dict[int, QueryScores]] = {}
    for metrics_path, per_query_path in zip(metrics_paths, per_query_paths, strict=True):
        final = final_metrics(METRICS.read(metrics_path), str(metrics_path))
        if len(final) != 1:
            raise PipelineError(
                f"{metrics_path}: the last model is evaluated {len(final)} times (with and "
                "without re-ranking); a per-query table belongs to one evaluation: keep one"
            )
        row = final.iloc[0]
        scores = query_scores(PER_QUERY.read(per_query_path), str(per_query_path))
        _check_agreement(row, scores, metrics_path, per_query_path)
        seed = int(row["seed"]) if "seed" in final else -1
        by_seed = runs.setdefault(str(row["experiment"]), {})
        if seed in by_seed:
            raise PipelineError(
                f"{metrics_path}: experiment {row['experiment']!r} seed {seed} is given twice; "
                "pass each run once"
            )
        by_seed[seed] = scores
    return runs


def _check_agreement(
    row: pd.Series, scores: QueryScores, metrics_path: Path, per_query_path: Path
) -> None:
    """Refuse a per-query table that is not the one behind the metrics ``row``."""
    found = {
        "num_query": len(scores.query),
        "num_valid_query": int(scores.valid.sum()),
        "mAP": float(scores.metrics(("mAP",))[0]),
    }
    for name, value in found.items():
        if name in row and not np.isclose(value, row[name], rtol=0, atol=AGREEMENT):
            raise PipelineError(
                f"{per_query_path} gives {name} {value} but {metrics_path} says {row[name]}: "
                "they come from different evaluations; pass each run's metrics and per-query "
                "tables in the same order, or rerun `pipeline evaluate` for that run"
            )


def comparison_markdown(
    tables: ReplicateTables, versions: dict[str, str], config: tuple[Path, str] | None
) -> str:
    """The comparison as a Markdown document: the tables in percent, the software versions and
    the configuration file's text (``config`` = (path, text), or None)."""
    from pipeline.report.replicates import replicates_markdown
    from pipeline.report.tables import markdown_table

    parts = [
        "# Comparison of experiments",
        "",
        INTRODUCTION,
        "",
        replicates_markdown(tables),
        "## Software",
        "",
        markdown_table(_software(versions)),
        "## Configuration",
        "",
    ]
    if config is None:
        parts.append(NO_CONFIG + "\n")
    else:
        path, text = config
        parts += [f"`{path}`:", "", "```yaml", text.rstrip("\n"), "```", ""]
    return "\n".join(parts)


def comparison_html(
    tables: ReplicateTables, versions: dict[str, str], config: tuple[Path, str] | None
) -> str:
    """The content of :func:`comparison_markdown` as a self-contained HTML page (what the
    workflow's HTML report shows: it displays HTML results in the page, and offers other
    tables only as downloads)."""
    from pipeline.report.replicates import replicates_html

    if config is None:
        configuration = f"<p>{NO_CONFIG}</p>"
    else:
        path, text = config
        configuration = (
            f"<p><code>{html.escape(str(path))}</code>:</p><pre>{html.escape(text)}</pre>"
        )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            '<head><meta charset="utf-8"><title>Comparison of experiments</title>',
            f"<style>{STYLE}</style></head>",
            "<body>",
            "<h1>Comparison of experiments</h1>",
            f"<p>{INTRODUCTION}</p>",
            replicates_html(tables),
            "<h2>Software</h2>",
            _software(versions).to_html(index=False, border=0),
            "<h2>Configuration</h2>",
            configuration,
            "</body>",
            "</html>",
            "",
        ]
    )


INTRODUCTION = (
    "Final model of each experiment and seed; metrics in % on the query/gallery protocol."
)
NO_CONFIG = "Not given (option --config)."
STYLE = (
    "body{font-family:sans-serif;margin:1em;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
    "th,td{padding:0.2em 0.7em;border-bottom:1px solid #ccc;text-align:right}"
    "th:first-child,td:first-child{text-align:left}"
    "h2{font-size:1.05em}pre{background:#f4f4f4;padding:0.5em}"
)


def _software(versions: dict[str, str]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({"software": list(versions), "version": list(versions.values())})


def run(args: argparse.Namespace) -> None:
    from pipeline.io import atomic_output, write_table
    from pipeline.report.figures import save_figure
    from pipeline.report.provenance import software_versions
    from pipeline.report.replicates import plot_replicates, replicate_tables, replicates_text

    options = settings.from_args(CompareOptions, args)
    config = None
    if args.config is not None:
        if not args.config.is_file():
            raise PipelineError(f"{args.config}: configuration file not found (option --config)")
        config = (args.config, args.config.read_text())
    runs = read_runs(args.metrics, args.per_query)
    tables = replicate_tables(
        runs,
        options.baseline,
        shared=args.shared,
        primary=options.metric,
        resamples=options.bootstrap_resamples,
        bootstrap_seed=options.bootstrap_seed,
        confidence=options.confidence,
    )
    write_table(tables.summary, args.out)
    for frame, path in (
        (tables.runs, args.runs_table),
        (tables.differences, args.differences_table),
    ):
        if path is not None:
            write_table(frame, path)
    text = replicates_text(tables)
    documents = {args.text: text}
    if args.markdown is not None or args.html is not None:
        versions = software_versions()
        documents[args.markdown] = comparison_markdown(tables, versions, config)
        documents[args.html] = comparison_html(tables, versions, config)
    for path, content in documents.items():
        if path is not None:
            with atomic_output(path) as tmp:
                tmp.write_text(content)
    if args.plot is not None:
        save_figure(plot_replicates(tables), args.plot)
    print(text, end="")
    log.info(
        "compared %d run(s) of %d experiment(s) into %s", len(args.metrics), len(runs), args.out
    )
