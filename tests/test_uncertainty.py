"""Bootstrap intervals over query identities, paired differences over seeds and queries, the
comparison table with uncertainty built on them, and the compare stage that writes it."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from pipeline.errors import PipelineError
from pipeline.evaluate.metrics import QueryScores
from pipeline.evaluate.uncertainty import (
    BETTER,
    UNCLEAR,
    WORSE,
    bootstrap_interval,
    check_same_queries,
    identity_bootstrap,
    paired_difference,
    resampled_means,
    t_mixture_quantiles,
)
from pipeline.report.replicates import (
    BASELINE,
    QUERIES_ONLY,
    SEEDS_AND_QUERIES,
    plot_replicates,
    query_scores,
    replicate_tables,
    replicates_markdown,
    replicates_text,
)
from pipeline.stages import compare
from pipeline.tables import COMPARISON, COMPARISON_DIFFERENCES, COMPARISON_RUNS

RESAMPLES = 500


def scores(ap, pid, first_rank=None, inp=None) -> QueryScores:
    """Per-query scores with every query valid at rank 1 unless told otherwise."""
    ap = np.asarray(ap, dtype=np.float64)
    first_rank = np.ones(len(ap), dtype=np.int64) if first_rank is None else first_rank
    return QueryScores(
        query=np.arange(len(ap)),
        pid=np.asarray(pid, dtype=np.int64),
        ap=ap,
        inp=ap if inp is None else np.asarray(inp, dtype=np.float64),
        first_rank=np.asarray(first_rank, dtype=np.int64),
    )


def planted_runs(shift: float, seeds: int = 3, noise: float = 0.05) -> list[QueryScores]:
    """Runs on 30 identities x 2 queries whose AP is the baseline's plus ``shift``, with
    per-query noise and a small per-seed offset."""
    rng = np.random.default_rng(100 + int(1000 * shift))
    base = np.random.default_rng(0).uniform(0.2, 0.6, 60)
    pid = np.repeat(np.arange(30), 2)
    return [
        scores(np.clip(base + shift + rng.normal(0, noise, 60) + rng.normal(0, 0.01), 0, 1), pid)
        for _ in range(seeds)
    ]


# ---------------------------------------------------------------------------------------------
# one run


def test_values_follow_the_metric_definitions():
    run = scores(
        [1.0, 0.5, np.nan, 0.25], [1, 1, 2, 3], first_rank=[1, 2, 0, 7], inp=[1.0, 0.5, 0.0, 0.2]
    )
    np.testing.assert_array_equal(run.valid, [True, True, False, True])
    np.testing.assert_allclose(
        run.metrics(("mAP", "rank1", "rank5", "mINP")), [1.75 / 3, 1 / 3, 2 / 3, 1.7 / 3]
    )
    assert not np.isnan(run.values()).any()  # the query without a match cannot poison sums
    with pytest.raises(ValueError, match="unknown metric 'rank0'"):
        run.values(("rank0",))


def test_all_queries_equal_give_a_zero_width_interval():
    run = scores(np.full(12, 0.4), np.repeat(np.arange(4), 3), first_rank=np.full(12, 3))
    value, low, high = bootstrap_interval(run, identity_bootstrap(run, RESAMPLES))
    np.testing.assert_allclose(value, [0.4, 0.0, 1.0, 0.4])
    np.testing.assert_allclose(low, value, atol=1e-12)
    np.testing.assert_allclose(high, value, atol=1e-12)


def test_bootstrap_spread_matches_the_plug_in_standard_error():
    """One query per identity: the resampled means' spread is sd(x) / sqrt(n), sd with ddof 0."""
    x = np.array([0.1, 0.9, 0.3, 0.5, 0.7, 0.2, 0.8, 0.4, 0.6, 1.0])
    run = scores(x, np.arange(10))
    means = resampled_means(identity_bootstrap(run, 20_000), run.values(("mAP",)))[:, 0]
    assert means.mean() == pytest.approx(x.mean(), abs=2e-3)
    assert means.std() == pytest.approx(x.std() / np.sqrt(10), rel=0.03)


def test_the_identity_is_the_resampling_unit():
    """Identity 7 has queries 1.0 and 0.0, identity 3 two at 0.5: every resample that keeps
    an identity's queries together has mean 0.5; queries drawn one by one would not."""
    values = [1.0, 0.0, 0.5, 0.5]
    grouped = scores(values, [7, 7, 3, 3])
    _, low, high = bootstrap_interval(grouped, identity_bootstrap(grouped, RESAMPLES), ("mAP",))
    assert low[0] == pytest.approx(0.5) and high[0] == pytest.approx(0.5)
    apart = scores(values, [0, 1, 2, 3])
    _, low, high = bootstrap_interval(apart, identity_bootstrap(apart, RESAMPLES), ("mAP",))
    assert high[0] - low[0] > 0.3


def test_queries_without_a_true_match_are_left_out():
    run = scores([0.2, 0.4, 0.9, 0.6, 0.1, 0.8], [0, 0, 1, 2, 3, 3])
    with_unmatched = scores(
        [0.2, 0.4, np.nan, 0.9, 0.6, 0.1, 0.8],
        [0, 0, 9, 1, 2, 3, 3],
        first_rank=[1, 1, 0, 1, 1, 1, 1],
        inp=[0.2, 0.4, 0.0, 0.9, 0.6, 0.1, 0.8],
    )
    expected = bootstrap_interval(run, identity_bootstrap(run, RESAMPLES, seed=3))
    found = bootstrap_interval(with_unmatched, identity_bootstrap(with_unmatched, RESAMPLES, 3))
    for a, b in zip(expected, found, strict=True):
        np.testing.assert_allclose(a, b)


def test_the_bootstrap_is_seeded():
    run = scores(np.linspace(0, 1, 20), np.arange(20) // 2)
    first, again = identity_bootstrap(run, RESAMPLES, 5), identity_bootstrap(run, RESAMPLES, 5)
    np.testing.assert_array_equal(first.counts, again.counts)
    assert not np.array_equal(first.counts, identity_bootstrap(run, RESAMPLES, 6).counts)
    assert (first.counts.sum(axis=1) == 10).all()  # each resample draws 10 identities


# ---------------------------------------------------------------------------------------------
# paired differences


@pytest.fixture(scope="module")
def baseline_runs() -> list[QueryScores]:
    return planted_runs(0.0)


def test_a_planted_difference_is_better_and_its_reverse_worse(baseline_runs):
    boot = identity_bootstrap(baseline_runs[0], RESAMPLES)
    better = paired_difference(planted_runs(0.1), baseline_runs, boot, ("mAP",))
    assert better.difference[0] == pytest.approx(0.1, abs=0.02)
    assert better.low[0] > 0 and better.verdicts == (BETTER,)
    worse = paired_difference(baseline_runs, planted_runs(0.1), boot, ("mAP",))
    assert worse.high[0] < 0 and worse.verdicts == (WORSE,)


def test_identical_runs_show_no_clear_difference(baseline_runs):
    boot = identity_bootstrap(baseline_runs[0], RESAMPLES)
    same = paired_difference(baseline_runs, baseline_runs, boot)
    for bound in (same.difference, same.low, same.high, same.seed_low, same.query_high):
        np.testing.assert_array_equal(bound, 0.0)
    assert same.verdicts == (UNCLEAR,) * 4


def test_three_better_seeds_are_not_enough_when_they_disagree():
    """The baseline scores 0.5 on every query, the experiment 0.6, 0.7 and 0.8 (one value per
    seed): the test set adds nothing, and the t interval over 3 seeds, 0.2 +- 4.30 x 0.1 /
    sqrt(3), includes zero although every seed is better."""
    pid = np.arange(8) // 2
    base = [scores(np.full(8, 0.5), pid)] * 3
    runs = [scores(np.full(8, v), pid) for v in (0.6, 0.7, 0.8)]
    paired = paired_difference(runs, base, identity_bootstrap(base[0], RESAMPLES), ("mAP",))
    half = stats.t.ppf(0.975, 2) * 0.1 / np.sqrt(3)
    assert paired.difference[0] == pytest.approx(0.2)
    assert paired.seed_low[0] == pytest.approx(0.2 - half)
    assert paired.seed_high[0] == pytest.approx(0.2 + half)
    assert paired.query_low[0] == pytest.approx(0.2) and paired.query_high[0] == pytest.approx(0.2)
    assert paired.low[0] == pytest.approx(0.2 - half) and paired.high[0] == pytest.approx(
        0.2 + half
    )
    assert paired.verdicts == (UNCLEAR,)


def test_the_combined_interval_covers_seeds_and_queries(baseline_runs):
    boot = identity_bootstrap(baseline_runs[0], RESAMPLES)
    paired = paired_difference(planted_runs(0.02, noise=0.1), baseline_runs, boot, ("mAP",))
    assert (paired.low < paired.seed_low).all() and (paired.high > paired.seed_high).all()
    assert (paired.low < paired.query_low).all() and (paired.high > paired.query_high).all()
    one_seed = paired_difference(planted_runs(0.02, 1), baseline_runs[:1], boot, ("mAP",))
    assert np.isnan(one_seed.seed_low).all()
    np.testing.assert_array_equal(one_seed.low, one_seed.query_low)
    np.testing.assert_array_equal(one_seed.high, one_seed.query_high)


def test_t_mixture_quantiles():
    one = t_mixture_quantiles(np.array([[0.3]]), np.array([0.1]), 2, (0.025, 0.975))
    np.testing.assert_allclose(one[:, 0], 0.3 + 0.1 * stats.t.ppf([0.025, 0.975], 2))
    centres = np.array([[0.0, 1.0], [0.2, 1.0], [0.9, 1.0]])
    found = t_mixture_quantiles(centres, np.array([0.05, 0.2]), 4, (0.1, 0.5))
    cdf = stats.t.cdf((found[:, None, :] - centres[None]) / np.array([0.05, 0.2]), 4).mean(axis=1)
    np.testing.assert_allclose(cdf, [[0.1, 0.1], [0.5, 0.5]], atol=1e-9)


def test_runs_on_other_queries_are_refused():
    run = scores([0.2, 0.4, 0.6, 0.8], [0, 0, 1, 1])
    swapped = QueryScores(
        query=run.query[[0, 2, 1, 3]],
        pid=run.pid[[0, 2, 1, 3]],
        ap=run.ap,
        inp=run.inp,
        first_rank=run.first_rank,
    )
    with pytest.raises(PipelineError, match="calr and base differ at query row 1"):
        check_same_queries([run, swapped], ["base", "calr"])
    with pytest.raises(PipelineError, match="calr has 3 queries but base has 4"):
        check_same_queries([run, scores([0.2, 0.4, 0.6], [0, 0, 1])], ["base", "calr"])
    unmatched = scores([0.2, 0.4, 0.6, np.nan], [0, 0, 1, 1], first_rank=[1, 1, 1, 0])
    with pytest.raises(PipelineError, match="row 3 .* has a true match in base only"):
        check_same_queries([run, unmatched], ["base", "calr"])


# ---------------------------------------------------------------------------------------------
# the comparison table


@pytest.fixture(scope="module")
def tables(baseline_runs):
    runs = {
        "baseline": dict(enumerate(baseline_runs)),
        "calr": dict(enumerate(planted_runs(0.1))),
        "same": dict(enumerate(baseline_runs)),
    }
    return replicate_tables(runs, "baseline", resamples=RESAMPLES)


def test_the_comparison_table(tables):
    summary = tables.summary.set_index("experiment")
    assert list(summary.index) == ["baseline", "calr", "same"]
    assert summary.loc["baseline", "verdict"] == BASELINE
    assert list(summary.loc[["calr", "same"], "verdict"]) == [BETTER, UNCLEAR]
    assert summary.loc["calr", "mAP_mean"] - summary.loc["baseline", "mAP_mean"] == pytest.approx(
        summary.loc["calr", "difference"]
    )
    assert summary.loc["calr", "mAP_std"] > 0
    assert len(tables.runs) == 9 and set(tables.runs["seed"]) == {0, 1, 2}
    assert (tables.runs["mAP_low"] < tables.runs["mAP"]).all()
    assert (tables.runs["mAP"] < tables.runs["mAP_high"]).all()
    assert len(tables.differences) == 2 * 4  # two experiments x four metrics


def test_the_comparison_prints_spread_intervals_and_verdict(tables):
    calr = tables.summary.set_index("experiment").loc["calr"]
    spread = f"{100 * calr['mAP_mean']:.1f} ± {100 * calr['mAP_std']:.1f}"
    interval = f"[{100 * calr['low']:+.1f}, {100 * calr['high']:+.1f}]"
    markdown, text = replicates_markdown(tables), replicates_text(tables)
    for shown in (markdown, text):
        assert spread in shown and interval in shown and "no clear difference" in shown
    assert f"| calr | 3 | {spread} |" in markdown


def test_experiments_need_the_baselines_seeds(baseline_runs):
    runs = {"baseline": dict(enumerate(baseline_runs)), "calr": {0: baseline_runs[0]}}
    with pytest.raises(PipelineError, match=r"'calr' has seeds \[0\] but 'baseline' has \[0, "):
        replicate_tables(runs, "baseline")
    with pytest.raises(PipelineError, match="baseline 'none' is not among"):
        replicate_tables(runs, "none")


def test_one_seed_says_the_interval_covers_queries_only(baseline_runs):
    runs = {"baseline": {7: baseline_runs[0]}, "calr": {7: planted_runs(0.1, 1)[0]}}
    summary = replicate_tables(runs, "baseline", resamples=RESAMPLES).summary
    assert summary["interval_over"].iloc[1] == QUERIES_ONLY
    assert np.isnan(summary["mAP_std"]).all()


def test_query_scores_from_a_table():
    table = pd.DataFrame(
        {
            "query": [4, 9, 11],
            "pid": [1, 1, 2],
            "ap": [0.5, np.nan, 1.0],
            "inp": [0.25, 0.0, 1.0],
            "first_rank": [2, 0, 1],
        }
    )
    run = query_scores(table, "calr/per_query.csv")
    np.testing.assert_array_equal(run.valid, [True, False, True])
    np.testing.assert_allclose(run.metrics(("mAP", "rank1")), [0.75, 0.5])
    with pytest.raises(PipelineError, match="per_query.csv: missing column.s. inp"):
        query_scores(table.drop(columns="inp"), "per_query.csv")
    with pytest.raises(PipelineError, match="'first_rank' .* must hold integers.* row 0: 2.5"):
        query_scores(table.assign(first_rank=[2.5, 0.0, 1.0]), "per_query.csv")
    with pytest.raises(PipelineError, match="row 2 has first_rank 1, ap nan"):
        query_scores(table.assign(ap=[0.5, np.nan, np.nan]), "per_query.csv")


def test_plot_replicates(tables):
    fig = plot_replicates(tables)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "baseline\n(baseline)",
        "calr\nbetter",
        "same\nno clear difference",
    ]
    assert len(ax.containers) == 3  # one error bar series per seed
    seed0 = ax.containers[0]  # its markers at the values, its bars spanning the intervals
    np.testing.assert_allclose(seed0.lines[0].get_ydata(), 100 * tables.runs["mAP"][::3])
    segments = seed0.lines[2][0].get_segments()
    np.testing.assert_allclose([s[0][1] for s in segments], 100 * tables.runs["mAP_low"][::3])


def test_a_shared_run_stands_for_every_seed(baseline_runs):
    """The initial model runs once: its one run is paired with each of the baseline's seeds."""
    initial = planted_runs(-0.1, seeds=1)[0]
    runs = {
        "initial": {-1: initial},
        "baseline": dict(enumerate(baseline_runs)),
        "calr": dict(enumerate(planted_runs(0.1))),
    }
    tables = replicate_tables(runs, "baseline", shared=("initial",), resamples=RESAMPLES)
    row = tables.summary.set_index("experiment").loc["initial"]
    assert bool(row["shared"]) and row["seeds"] == 1 and np.isnan(row["mAP_std"])
    assert row["verdict"] == WORSE and row["interval_over"] == SEEDS_AND_QUERIES
    alone = paired_difference(
        [initial] * 3, baseline_runs, identity_bootstrap(initial, RESAMPLES), ("mAP",)
    )
    assert row["difference"] == pytest.approx(alone.difference[0])
    assert (row["low"], row["high"]) == pytest.approx((alone.low[0], alone.high[0]))
    assert tables.runs["experiment"].tolist() == ["initial"] + ["baseline"] * 3 + ["calr"] * 3
    assert "| initial | shared |" in replicates_markdown(tables)
    fig = plot_replicates(tables)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert sorted(labels) == [
        "mean over seeds",
        "one run for all seeds",
        "seed 0",
        "seed 1",
        "seed 2",
    ]
    with pytest.raises(PipelineError, match="shared experiment 'calr' has 3 runs"):
        replicate_tables(runs, "baseline", shared=("calr",))
    with pytest.raises(PipelineError, match="shared experiment.s. other are not among"):
        replicate_tables(runs, "baseline", shared=("other",))


# ---------------------------------------------------------------------------------------------
# the compare stage


def write_run(folder: Path, experiment: str, seed: int, run: QueryScores) -> tuple[Path, Path]:
    """A run's metrics table and per-query table, as `pipeline evaluate` writes them."""
    value = run.metrics(("mAP", "rank1", "rank5", "mINP"))
    metrics = folder / f"{experiment}-{seed}.metrics.csv"
    pd.DataFrame(
        [
            {
                "experiment": experiment,
                "dataset": "demo",
                "epoch": 4,
                "seed": seed,
                "mAP": value[0],
                "rank1": value[1],
                "rank5": value[2],
                "rank10": value[2],
                "mINP": value[3],
                "num_query": len(run.query),
                "num_valid_query": int(run.valid.sum()),
                "reranking": False,
            }
        ]
    ).to_csv(metrics, index=False)
    per_query = folder / f"{experiment}-{seed}.per_query.csv"
    pd.DataFrame(
        {"query": run.query, "pid": run.pid, "ap": run.ap, "inp": run.inp, "first_rank": 1}
    ).to_csv(per_query, index=False)
    return metrics, per_query


@pytest.fixture(scope="module")
def compare_inputs(tmp_path_factory, baseline_runs) -> tuple[list[Path], list[Path]]:
    """initial (one run, seed -1), baseline and calr (seeds 0-2), in that order."""
    folder = tmp_path_factory.mktemp("compare-inputs")
    runs = [("initial", -1, planted_runs(-0.1, seeds=1)[0])]
    runs += [("baseline", seed, run) for seed, run in enumerate(baseline_runs)]
    runs += [("calr", seed, run) for seed, run in enumerate(planted_runs(0.1))]
    pairs = [write_run(folder, *run) for run in runs]
    return [m for m, _ in pairs], [q for _, q in pairs]


def run_compare(metrics: list[Path], per_query: list[Path], *options: str) -> None:
    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)  # not the whole CLI: it would import PyTorch
    compare.run(
        parser.parse_args(
            ["--metrics", *map(str, metrics), "--per-query", *map(str, per_query), *options]
        )
    )


def test_compare_writes_the_comparison_everywhere(compare_inputs, tmp_path, capsys):
    out = tmp_path / "out"
    outputs = {
        "--out": "comparison.csv",
        "--runs-table": "runs.csv",
        "--differences-table": "differences.csv",
        "--markdown": "comparison.md",
        "--html": "comparison.html",
        "--text": "comparison.txt",
        "--plot": "replicates.png",
    }
    (tmp_path / "config.yaml").write_text("replicates: 3\n")
    options = [word for flag, name in outputs.items() for word in (flag, str(out / name))]
    run_compare(
        *compare_inputs,
        "--shared", "initial", *options, "--config", str(tmp_path / "config.yaml"),
        "--bootstrap-resamples", "500",
    )  # fmt: skip
    summary = COMPARISON.read(out / "comparison.csv").set_index("experiment")
    assert list(summary.index) == ["initial", "baseline", "calr"]
    assert list(summary["verdict"]) == [WORSE, BASELINE, BETTER]
    assert list(summary["seeds"]) == [1, 3, 3] and list(summary["shared"]) == [True, False, False]
    assert len(COMPARISON_RUNS.read(out / "runs.csv")) == 7
    assert len(COMPARISON_DIFFERENCES.read(out / "differences.csv")) == 2 * 4
    calr = summary.loc["calr"]
    spread = f"{100 * calr['mAP_mean']:.1f} ± {100 * calr['mAP_std']:.1f}"
    interval = f"[{100 * calr['low']:+.1f}, {100 * calr['high']:+.1f}]"
    printed = capsys.readouterr().out
    assert printed == (out / "comparison.txt").read_text()
    markdown = (out / "comparison.md").read_text()
    page = (out / "comparison.html").read_text()
    for shown in (printed, markdown, page):
        assert spread in shown and interval in shown and "better" in shown
    assert "```yaml\nreplicates: 3\n```" in markdown and "| torch |" in markdown
    assert page.startswith("<!DOCTYPE html>") and page.count("<table") == 4
    assert f"<td>{spread}</td>" in page and "<pre>replicates: 3\n</pre>" in page
    with Image.open(out / "replicates.png") as image:
        assert image.size[0] > 500
    assert not list(out.glob(".tmp-*"))


def test_compare_refuses_runs_it_cannot_pair(compare_inputs, tmp_path):
    metrics, per_query = compare_inputs
    out = ("--shared", "initial", "--out", str(tmp_path / "c.csv"))
    with pytest.raises(PipelineError, match="7 metrics table.s. but 6 per-query"):
        run_compare(metrics, per_query[:-1], *out)
    swapped = [per_query[1], per_query[0], *per_query[2:]]
    with pytest.raises(PipelineError, match=r"baseline-0.per_query.csv gives mAP .* but "):
        run_compare(metrics, swapped, *out)
    with pytest.raises(PipelineError, match=r"'calr' seed 2 is given twice"):
        run_compare([*metrics, metrics[-1]], [*per_query, per_query[-1]], *out)
    with pytest.raises(
        PipelineError, match=r"'baseline' has seeds \[0, 1, 2\] but 'initial' has \[-1\].*--shared"
    ):
        run_compare(metrics, per_query, "--out", str(tmp_path / "c.csv"))
    with pytest.raises(PipelineError, match="--confidence must lie strictly between 0 and 1"):
        run_compare(metrics, per_query, *out, "--confidence", "1")
    assert not (tmp_path / "c.csv").exists()
