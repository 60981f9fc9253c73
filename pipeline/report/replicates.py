"""The comparison with uncertainty: experiments run with several seeds, each run's bootstrap
interval over query identities, and each experiment's paired difference against the baseline
with the verdict its interval gives (the statistics: :mod:`pipeline.evaluate.uncertainty`).

Three DataFrames, values as fractions in [0, 1]:

- ``runs``: one row per (experiment, seed): ``num_query``, ``num_valid_query`` and, per metric
  ``m``, its value ``m`` and its interval ``m_low``, ``m_high``;
- ``differences``: one row per (experiment, metric) against the baseline: ``seeds``,
  ``difference``, the interval over seeds ``seed_low``/``seed_high``, over queries
  ``query_low``/``query_high``, combined ``low``/``high`` and the ``verdict``;
- ``summary``: one row per experiment: ``seeds``, ``num_valid_query``, per metric its mean
  ``m_mean`` and standard deviation ``m_std`` over seeds, and the primary metric's
  (``compared_on``) ``difference``, ``low``, ``high``, ``verdict`` and ``interval_over`` (what
  the interval covers). The baseline's row has verdict "baseline".

They print as Markdown (:func:`replicates_markdown`) and plain text (:func:`replicates_text`)
in percent, and the per-seed values plot with their intervals (:func:`plot_replicates`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pipeline.errors import PipelineError
from pipeline.evaluate.uncertainty import (
    CONFIDENCE,
    METRICS,
    RESAMPLES,
    QueryScores,
    bootstrap_interval,
    check_same_queries,
    identity_bootstrap,
    paired_difference,
)
from pipeline.report.figures import new_figure, percent
from pipeline.report.tables import DISPLAY_NAMES, markdown_table

# the evaluate stage's per-query table: one row per query, in evaluation order
PER_QUERY_COLUMNS = ("query", "pid", "ap", "inp", "first_rank")
BASELINE = "baseline"
SEEDS_AND_QUERIES = "seeds and query identities"
QUERIES_ONLY = "query identities only (one seed)"


def query_scores(table: pd.DataFrame, source: str) -> QueryScores:
    """A per-query table (columns :data:`PER_QUERY_COLUMNS`) as :class:`QueryScores`;
    ``source`` names the table in error messages."""
    missing = [c for c in PER_QUERY_COLUMNS if c not in table]
    if missing:
        raise PipelineError(
            f"{source}: missing column(s) {', '.join(missing)}; a per-query table has the "
            f"columns {', '.join(PER_QUERY_COLUMNS)} (rerun `pipeline evaluate`)"
        )
    if not pd.api.types.is_integer_dtype(table["first_rank"]):
        raise PipelineError(
            f"{source}: column first_rank holds {table['first_rank'].dtype} values; it is the "
            "integer rank of each query's first true match, 0 without one (rerun `pipeline "
            "evaluate`)"
        )
    first_rank = table["first_rank"].to_numpy(dtype=np.int64)
    ap = table["ap"].to_numpy(dtype=np.float64)
    inp = table["inp"].to_numpy(dtype=np.float64)
    bad = (first_rank < 0) | ((first_rank > 0) & ~((ap >= 0) & (ap <= 1) & (inp > 0) & (inp <= 1)))
    if bad.any():
        row = int(np.argmax(bad))
        raise PipelineError(
            f"{source}: row {row} has first_rank {first_rank[row]}, ap {ap[row]}, inp {inp[row]}; "
            "a query with a true match (first_rank >= 1) needs ap in [0, 1] and inp in (0, 1], "
            "one without has first_rank 0 (rerun `pipeline evaluate`)"
        )
    return QueryScores(
        query=table["query"].to_numpy(),
        pid=table["pid"].to_numpy(dtype=np.int64),
        ap=ap,
        inp=inp,
        first_rank=first_rank,
    )


@dataclass(frozen=True)
class ReplicateTables:
    """The comparison with uncertainty and the settings that produced it."""

    runs: pd.DataFrame
    differences: pd.DataFrame
    summary: pd.DataFrame
    baseline: str
    primary: str
    metrics: tuple[str, ...]
    resamples: int
    bootstrap_seed: int
    confidence: float


def replicate_tables(
    runs: Mapping[str, Mapping[int, QueryScores]],
    baseline: str,
    *,
    metrics: Sequence[str] = METRICS,
    primary: str = "mAP",
    resamples: int = RESAMPLES,
    bootstrap_seed: int = 0,
    confidence: float = CONFIDENCE,
) -> ReplicateTables:
    """Compare the experiments of ``runs`` (experiment -> seed -> per-query scores, in the
    order given) against ``baseline``, one of them, pairing runs by seed.

    Every run must be evaluated on the same queries, and every experiment must have the
    baseline's seeds. One identity bootstrap (``resamples`` draws from ``bootstrap_seed``)
    serves all runs, so every interval and difference sees the same resampled test sets.
    """
    metrics = tuple(metrics)
    if primary not in metrics:
        raise ValueError(f"primary metric {primary!r} is not among {metrics}")
    if baseline not in runs:
        raise PipelineError(
            f"baseline {baseline!r} is not among the experiments compared "
            f"({', '.join(runs)}); name one of them as the baseline"
        )
    seeds = sorted(runs[baseline])
    for experiment, by_seed in runs.items():
        if sorted(by_seed) != seeds:
            raise PipelineError(
                f"experiment {experiment!r} has seeds {sorted(by_seed)} but the baseline "
                f"{baseline!r} has {seeds}; paired differences need the same seeds: run the "
                "missing ones or drop the extra ones"
            )
    names = [f"{experiment} (seed {seed})" for experiment in runs for seed in seeds]
    flat = [runs[experiment][seed] for experiment in runs for seed in seeds]
    check_same_queries(flat, names)
    bootstrap = identity_bootstrap(flat[0], resamples, bootstrap_seed)

    run_rows = []
    for experiment, by_seed in runs.items():
        for seed in seeds:
            scores = by_seed[seed]
            value, low, high = bootstrap_interval(scores, bootstrap, metrics, confidence)
            row = {
                "experiment": experiment,
                "seed": seed,
                "num_query": len(scores.query),
                "num_valid_query": int(scores.valid.sum()),
            }
            for i, metric in enumerate(metrics):
                row |= {metric: value[i], f"{metric}_low": low[i], f"{metric}_high": high[i]}
            run_rows.append(row)
    run_table = pd.DataFrame(run_rows)

    base_runs = [runs[baseline][seed] for seed in seeds]
    difference_rows, compared = [], {}
    for experiment, by_seed in runs.items():
        if experiment == baseline:
            continue
        paired = paired_difference(
            [by_seed[seed] for seed in seeds], base_runs, bootstrap, metrics, confidence
        )
        for i, metric in enumerate(metrics):
            difference_rows.append(
                {
                    "experiment": experiment,
                    "metric": metric,
                    "seeds": paired.seeds,
                    "difference": paired.difference[i],
                    "seed_low": paired.seed_low[i],
                    "seed_high": paired.seed_high[i],
                    "query_low": paired.query_low[i],
                    "query_high": paired.query_high[i],
                    "low": paired.low[i],
                    "high": paired.high[i],
                    "verdict": paired.verdicts[i],
                }
            )
        at = metrics.index(primary)
        compared[experiment] = {
            "difference": paired.difference[at],
            "low": paired.low[at],
            "high": paired.high[at],
            "verdict": paired.verdicts[at],
            "interval_over": SEEDS_AND_QUERIES if paired.seeds > 1 else QUERIES_ONLY,
        }
    difference_table = pd.DataFrame(
        difference_rows,
        columns=[
            "experiment",
            "metric",
            "seeds",
            "difference",
            "seed_low",
            "seed_high",
            "query_low",
            "query_high",
            "low",
            "high",
            "verdict",
        ],  # fmt: skip
    )

    grouped = run_table.groupby("experiment", sort=False)
    summary = pd.DataFrame(
        {
            "experiment": list(runs),
            "seeds": len(seeds),
            "num_valid_query": grouped["num_valid_query"].first().to_numpy(),
        }
    )
    for metric in metrics:
        summary[f"{metric}_mean"] = grouped[metric].mean().to_numpy()
        summary[f"{metric}_std"] = grouped[metric].std(ddof=1).to_numpy()
    summary["compared_on"] = primary
    no_difference = dict.fromkeys(("difference", "low", "high"), np.nan)
    no_difference |= {"verdict": BASELINE, "interval_over": ""}
    for column in no_difference:
        summary[column] = [compared.get(e, no_difference)[column] for e in summary["experiment"]]
    return ReplicateTables(
        runs=run_table,
        differences=difference_table,
        summary=summary,
        baseline=baseline,
        primary=primary,
        metrics=metrics,
        resamples=resamples,
        bootstrap_seed=bootstrap_seed,
        confidence=confidence,
    )


def signed_percent(value: float) -> str:
    """A difference of fractions in percentage points with its sign; NaN as ``n/a``."""
    return "n/a" if not np.isfinite(value) else f"{100 * value:+.1f}"


def interval_text(low: float, high: float, signed: bool = False) -> str:
    """``[low, high]`` in percent (with signs for differences); ``n/a`` if either is NaN."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "n/a"
    show = signed_percent if signed else percent
    return f"[{show(low)}, {show(high)}]"


def _intervals(frame: pd.DataFrame, low: str, high: str, signed: bool = False) -> list[str]:
    """:func:`interval_text` of columns ``low`` and ``high`` of every row of ``frame``."""
    return [interval_text(a, b, signed) for a, b in zip(frame[low], frame[high], strict=True)]


def _display_name(metric: str) -> str:
    return DISPLAY_NAMES.get(metric, metric)


def display_sections(tables: ReplicateTables) -> list[tuple[str, pd.DataFrame]]:
    """The three tables for people, in percent, each with its heading."""
    level = f"{100 * tables.confidence:g}%"
    primary = _display_name(tables.primary)
    s = tables.summary
    summary = pd.DataFrame({"Experiment": s["experiment"], "Seeds": s["seeds"].astype(str)})
    for metric in tables.metrics:
        spread = s[f"{metric}_std"].map(lambda v: f" ± {percent(v)}" if np.isfinite(v) else "")
        summary[_display_name(metric)] = s[f"{metric}_mean"].map(percent) + spread
    summary[f"{primary} difference"] = s["difference"].map(signed_percent)
    summary[f"{level} interval"] = _intervals(s, "low", "high", signed=True)
    summary["Verdict"] = s["verdict"]

    r = tables.runs
    runs = pd.DataFrame({"Experiment": r["experiment"], "Seed": r["seed"].astype(str)})
    for metric in tables.metrics:
        value = r[metric].map(percent) + " "
        runs[_display_name(metric)] = value + _intervals(r, f"{metric}_low", f"{metric}_high")

    d = tables.differences
    differences = pd.DataFrame(
        {
            "Experiment": d["experiment"],
            "Metric": d["metric"].map(_display_name),
            "Difference": d["difference"].map(signed_percent),
            "Over seeds": _intervals(d, "seed_low", "seed_high", signed=True),
            "Over queries": _intervals(d, "query_low", "query_high", signed=True),
            "Combined": _intervals(d, "low", "high", signed=True),
            "Verdict": d["verdict"],
        }
    )
    return [
        (
            f"Experiments: mean ± standard deviation over seeds (%); {primary} against "
            f"{tables.baseline} with its combined {level} interval",
            summary,
        ),
        (f"Runs: value and {level} bootstrap interval over query identities (%)", runs),
        (
            f"Differences against {tables.baseline} (percentage points, {level} intervals)",
            differences,
        ),
    ]


def method_text(tables: ReplicateTables) -> str:
    """How the intervals and the verdict were computed, in a few sentences."""
    level = f"{100 * tables.confidence:g}%"
    return (
        f"Intervals at {level}. A run's interval is the percentile interval of "
        f"{tables.resamples:,} bootstrap resamples of the query identities (all queries of a "
        f"drawn identity together; generator seed {tables.bootstrap_seed}), the same resamples "
        "for every run. A difference pairs the runs by seed: its interval over seeds is a t "
        "interval of the per-seed differences, its interval over queries the percentile "
        "interval of the resampled differences, and the combined interval adds to each resampled "
        "difference a t-distributed seed error of the per-seed differences' standard error "
        "(with one seed it is the interval over queries). "
        "The verdict reads the combined interval: better or worse when it excludes zero, "
        "otherwise no clear difference."
    )


def replicates_markdown(tables: ReplicateTables) -> str:
    """The comparison with uncertainty as Markdown sections (no document title)."""
    parts = []
    for heading, frame in display_sections(tables):
        parts += [f"## {heading}", "", markdown_table(frame)]
    parts += [method_text(tables), ""]
    return "\n".join(parts)


def replicates_text(tables: ReplicateTables) -> str:
    """The comparison with uncertainty for the console."""
    parts = []
    for heading, frame in display_sections(tables):
        parts += [heading, frame.to_string(index=False), ""]
    parts.append(method_text(tables))
    return "\n".join(parts) + "\n"


def plot_replicates(tables: ReplicateTables, metric: str | None = None) -> Figure:
    """Each experiment's ``metric`` (default: the primary one) per seed, with its bootstrap
    interval over query identities as an error bar, the mean over seeds as a bar, and under
    each experiment's name its verdict on the primary metric."""
    metric = metric or tables.primary
    runs = tables.runs
    experiments = list(tables.summary["experiment"])
    seeds = sorted(runs["seed"].unique())
    position = {name: i for i, name in enumerate(experiments)}
    offsets = np.linspace(-0.25, 0.25, len(seeds)) if len(seeds) > 1 else np.zeros(1)
    fig = new_figure(max(5.0, 1.9 * len(experiments) + 1.5), 4.5)
    ax = fig.subplots()
    for offset, seed in zip(offsets, seeds, strict=True):
        rows = runs[runs["seed"] == seed]
        value = 100 * rows[metric].to_numpy()
        ax.errorbar(
            rows["experiment"].map(position).to_numpy() + offset,
            value,
            yerr=[value - 100 * rows[f"{metric}_low"], 100 * rows[f"{metric}_high"] - value],
            fmt="o",
            capsize=3,
            label=f"seed {seed}",
        )
    ax.hlines(
        100 * tables.summary[f"{metric}_mean"],
        np.arange(len(experiments)) - 0.35,
        np.arange(len(experiments)) + 0.35,
        colors="0.2",
        label="mean over seeds",
    )
    labels = [
        f"{e}\n({v})" if v == BASELINE else f"{e}\n{v}"
        for e, v in zip(experiments, tables.summary["verdict"], strict=True)
    ]
    ax.set_xticks(np.arange(len(experiments)), labels)
    ax.set_xlim(-0.6, len(experiments) - 0.4)
    name = _display_name(metric)
    ax.set_ylabel(f"{name} (%)")
    ax.set_title(
        f"{name} per seed with its {100 * tables.confidence:g}% bootstrap interval over query "
        f"identities;\nverdict on {_display_name(tables.primary)} against {tables.baseline}",
        fontsize="medium",
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return fig
