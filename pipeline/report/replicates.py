"""The comparison with uncertainty: experiments run with several seeds, each run's bootstrap
interval over query identities, and each experiment's paired difference against the baseline
with the verdict its interval gives (the statistics: :mod:`pipeline.evaluate.uncertainty`).

Three DataFrames, values as fractions in [0, 1]:

- ``runs`` (:data:`pipeline.tables.COMPARISON_RUNS`): one row per (experiment, seed):
  ``num_query``, ``num_valid_query`` and, per metric ``m``, its value ``m`` and its interval
  ``m_low``, ``m_high``;
- ``differences`` (:data:`pipeline.tables.COMPARISON_DIFFERENCES`): one row per (experiment,
  metric) against the baseline: ``seeds``, ``difference``, the interval over seeds
  ``seed_low``/``seed_high``, over queries ``query_low``/``query_high``, combined ``low``/``high``
  and the ``verdict``;
- ``summary`` (:data:`pipeline.tables.COMPARISON`): one row per experiment: ``shared``,
  ``seeds``, ``num_valid_query``, per metric its mean ``m_mean`` and standard deviation ``m_std``
  over seeds, and the primary metric's (``compared_on``) ``difference``, ``low``, ``high``,
  ``verdict`` and ``interval_over`` (what the interval covers). The baseline's row has verdict
  "baseline".

A *shared* experiment ran once for all seeds (the initial model, which every seed's training
starts from): its one run is paired with each seed of the others.

They print as Markdown (:func:`replicates_markdown`), HTML (:func:`replicates_html`) and plain
text (:func:`replicates_text`) in percent, and the per-seed values plot with their intervals
(:func:`plot_replicates`).
"""

from __future__ import annotations

import html
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pipeline.errors import PipelineError
from pipeline.evaluate.metrics import QueryScores
from pipeline.evaluate.uncertainty import (
    CONFIDENCE,
    RESAMPLES,
    bootstrap_interval,
    check_same_queries,
    identity_bootstrap,
    paired_difference,
)
from pipeline.report.figures import new_figure, percent
from pipeline.report.tables import DISPLAY_NAMES, markdown_table
from pipeline.tables import (
    COMPARED_METRICS,
    COMPARISON,
    COMPARISON_DIFFERENCES,
    COMPARISON_RUNS,
    PER_QUERY,
)

BASELINE = "baseline"
SEEDS_AND_QUERIES = "seeds and query identities"
QUERIES_ONLY = "query identities only (one seed)"
NO_INTERVAL = "none (the baseline)"  # interval_over of the baseline's row
SHARED = "shared"  # shown for the seed of a shared experiment's run


def query_scores(table: pd.DataFrame, source: str) -> QueryScores:
    """A per-query table (:data:`pipeline.tables.PER_QUERY`) as :class:`QueryScores`;
    ``source`` names the table in error messages."""
    table = PER_QUERY.check(table, source)
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
        query=table["query"].to_numpy(dtype=np.int64),
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
    shared: tuple[str, ...]
    primary: str
    metrics: tuple[str, ...]
    resamples: int
    bootstrap_seed: int
    confidence: float


def replicate_tables(
    runs: Mapping[str, Mapping[int, QueryScores]],
    baseline: str,
    *,
    shared: Collection[str] = (),
    primary: str = "mAP",
    resamples: int = RESAMPLES,
    bootstrap_seed: int = 0,
    confidence: float = CONFIDENCE,
) -> ReplicateTables:
    """Compare the experiments of ``runs`` (experiment -> seed -> per-query scores, in the
    order given) against ``baseline``, one of them, pairing runs by seed, on the metrics
    :data:`pipeline.tables.COMPARED_METRICS` (``primary``: the one each experiment's row
    shows the verdict of).

    Every run must be evaluated on the same queries, and every experiment must have the same
    seeds, except the ``shared`` experiments: each has one run, which stands for every seed.
    One identity bootstrap (``resamples`` draws from ``bootstrap_seed``) serves all runs, so
    every interval and difference sees the same resampled test sets.
    """
    metrics = COMPARED_METRICS
    if primary not in metrics:
        raise ValueError(f"primary metric {primary!r} is not among {metrics}")
    if baseline not in runs:
        raise PipelineError(
            f"baseline {baseline!r} is not among the experiments compared "
            f"({', '.join(runs)}); name one of them as the baseline"
        )
    seeds = _common_seeds(runs, shared)
    names = [f"{experiment} (seed {seed})" for experiment, by in runs.items() for seed in by]
    flat = [scores for by in runs.values() for scores in by.values()]
    check_same_queries(flat, names)
    bootstrap = identity_bootstrap(flat[0], resamples, bootstrap_seed)

    run_rows = []
    for experiment, by_seed in runs.items():
        for seed in sorted(by_seed):
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
    run_table = COMPARISON_RUNS.frame(**pd.DataFrame(run_rows).to_dict("series"))

    def paired(experiment: str) -> list[QueryScores]:
        """The runs of ``experiment`` in the order of ``seeds``."""
        by_seed = runs[experiment]
        if experiment in shared:
            return list(by_seed.values()) * len(seeds)
        return [by_seed[seed] for seed in seeds]

    base_runs = paired(baseline)
    difference_rows, compared = [], {}
    for experiment in runs:
        if experiment == baseline:
            continue
        found = paired_difference(paired(experiment), base_runs, bootstrap, metrics, confidence)
        for i, metric in enumerate(metrics):
            difference_rows.append(
                {
                    "experiment": experiment,
                    "metric": metric,
                    "seeds": found.seeds,
                    "difference": found.difference[i],
                    "seed_low": found.seed_low[i],
                    "seed_high": found.seed_high[i],
                    "query_low": found.query_low[i],
                    "query_high": found.query_high[i],
                    "low": found.low[i],
                    "high": found.high[i],
                    "verdict": found.verdicts[i],
                }
            )
        at = metrics.index(primary)
        compared[experiment] = {
            "difference": found.difference[at],
            "low": found.low[at],
            "high": found.high[at],
            "verdict": found.verdicts[at],
            "interval_over": SEEDS_AND_QUERIES if found.seeds > 1 else QUERIES_ONLY,
        }
    difference_table = COMPARISON_DIFFERENCES.frame(
        **{name: [row[name] for row in difference_rows] for name in COMPARISON_DIFFERENCES.names}
    )

    grouped = run_table.groupby("experiment", sort=False)
    summary = {
        "experiment": list(runs),
        "shared": [experiment in shared for experiment in runs],
        "seeds": grouped.size().to_numpy(),
        "num_valid_query": grouped["num_valid_query"].first().to_numpy(),
    }
    for metric in metrics:
        summary[f"{metric}_mean"] = grouped[metric].mean().to_numpy()
        summary[f"{metric}_std"] = grouped[metric].std(ddof=1).to_numpy()
    summary["compared_on"] = primary
    no_difference = dict.fromkeys(("difference", "low", "high"), np.nan)
    no_difference |= {"verdict": BASELINE, "interval_over": NO_INTERVAL}
    for column in no_difference:
        summary[column] = [compared.get(e, no_difference)[column] for e in runs]
    return ReplicateTables(
        runs=run_table,
        differences=difference_table,
        summary=COMPARISON.frame(**summary),
        baseline=baseline,
        shared=tuple(e for e in runs if e in shared),
        primary=primary,
        metrics=metrics,
        resamples=resamples,
        bootstrap_seed=bootstrap_seed,
        confidence=confidence,
    )


def _common_seeds(runs: Mapping[str, Mapping[int, QueryScores]], shared: Collection[str]) -> list:
    """The seeds every experiment that is not ``shared`` ran with (the same for all of them),
    or the key of a shared experiment's one run when every experiment is shared."""
    unknown = sorted(set(shared) - set(runs))
    if unknown:
        raise PipelineError(
            f"shared experiment(s) {', '.join(unknown)} are not among the experiments compared "
            f"({', '.join(runs)})"
        )
    for experiment in shared:
        if len(runs[experiment]) != 1:
            raise PipelineError(
                f"shared experiment {experiment!r} has {len(runs[experiment])} runs (seeds "
                f"{sorted(runs[experiment])}); a shared experiment runs once for every seed"
            )
    own = [experiment for experiment in runs if experiment not in shared]
    if not own:
        return sorted(next(iter(runs.values())))
    seeds = sorted(runs[own[0]])
    for experiment in own[1:]:
        if sorted(runs[experiment]) != seeds:
            raise PipelineError(
                f"experiment {experiment!r} has seeds {sorted(runs[experiment])} but "
                f"{own[0]!r} has {seeds}; paired differences need the same seeds: run the "
                "missing ones or drop the extra ones (an experiment run once for all seeds, "
                "such as the initial model, is shared: compare --shared)"
            )
    return seeds


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
    seeds = s["seeds"].astype(str).where(~s["shared"], SHARED)
    summary = pd.DataFrame({"Experiment": s["experiment"], "Seeds": seeds})
    for metric in tables.metrics:
        spread = s[f"{metric}_std"].map(lambda v: f" ± {percent(v)}" if np.isfinite(v) else "")
        summary[_display_name(metric)] = s[f"{metric}_mean"].map(percent) + spread
    summary[f"{primary} difference"] = s["difference"].map(signed_percent)
    summary[f"{level} interval"] = _intervals(s, "low", "high", signed=True)
    summary["Verdict"] = s["verdict"]

    r = tables.runs
    seed = r["seed"].astype(str).where(~r["experiment"].isin(tables.shared), SHARED)
    runs = pd.DataFrame({"Experiment": r["experiment"], "Seed": seed})
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
        + (
            f"{' and '.join(tables.shared)} ran once for all seeds: that run is paired with "
            "every seed. "
            if tables.shared
            else ""
        )
        + "The verdict reads the combined interval: better or worse when it excludes zero, "
        "otherwise no clear difference."
    )


def replicates_markdown(tables: ReplicateTables) -> str:
    """The comparison with uncertainty as Markdown sections (no document title)."""
    parts = []
    for heading, frame in display_sections(tables):
        parts += [f"## {heading}", "", markdown_table(frame)]
    parts += [method_text(tables), ""]
    return "\n".join(parts)


def replicates_html(tables: ReplicateTables) -> str:
    """The comparison with uncertainty as HTML sections (no document around them)."""
    parts = []
    for heading, frame in display_sections(tables):
        parts += [f"<h2>{html.escape(heading)}</h2>", frame.to_html(index=False, border=0)]
    parts.append(f"<p>{html.escape(method_text(tables))}</p>")
    return "\n".join(parts) + "\n"


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
    position = {name: i for i, name in enumerate(experiments)}
    shared = runs["experiment"].isin(tables.shared)
    seeds = sorted(runs.loc[~shared, "seed"].unique())
    offsets = np.linspace(-0.25, 0.25, len(seeds)) if len(seeds) > 1 else np.zeros(len(seeds))
    series = [
        (f"seed {seed}", runs[~shared & (runs["seed"] == seed)], offset)
        for seed, offset in zip(seeds, offsets, strict=True)
    ]
    if shared.any():
        series.append(("one run for all seeds", runs[shared], 0.0))
    fig = new_figure(max(5.0, 1.9 * len(experiments) + 1.5), 4.5)
    ax = fig.subplots()
    for label, rows, offset in series:
        value = 100 * rows[metric].to_numpy()
        ax.errorbar(
            rows["experiment"].map(position).to_numpy() + offset,
            value,
            yerr=[value - 100 * rows[f"{metric}_low"], 100 * rows[f"{metric}_high"] - value],
            fmt="o",
            capsize=3,
            label=label,
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
