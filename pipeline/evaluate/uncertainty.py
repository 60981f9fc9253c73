"""Uncertainty of retrieval metrics: bootstrap intervals over query identities, paired
differences between two methods over seeds and over queries, and the verdict that follows.

Two sources of noise move a reported mAP:

- **the test set**: another draw of test people gives other queries. The sampling unit is the
  identity, not the query: the queries of one person share an appearance and the same true
  matches, so their scores are correlated, and resampling queries one by one would understate
  the spread. Identities are resampled whole (a cluster bootstrap; Davison & Hinkley,
  "Bootstrap Methods and their Application", 1997, section 3.8).
- **training**: another seed gives another model (sampling order, initialisation, clustering).

Input, per run (:class:`QueryScores`): for every query in the evaluation's order its AP, its
INP (Ye et al., TPAMI 2021), the 1-based rank of its first true match (0 when it has none), its
identity and an id (its row in the dataset index). Queries without a true match are left out of
every statistic, as :func:`pipeline.evaluate.metrics.evaluate_retrieval` leaves them out, and
identities with no valid query are not resampled (they add nothing to a mean over valid
queries).

**One run's interval.** B resamples, each drawing as many identities as the test set has, with
replacement, from a seeded generator. A resample's statistic is the mean of the per-query
values over the valid queries of the drawn identities (AP -> mAP, ``first_rank <= k`` ->
rank-k, INP -> mINP); a query counts as often as its identity is drawn. The interval is the
percentile interval (the 2.5th and 97.5th percentiles of the B statistics for 95%): it stays
inside [0, 1], needs no variance formula for mAP, and for means over tens to thousands of
identities it hardly differs from the bias-corrected BCa interval, which would cost a jackknife
over identities. Vectorised: a (B x identities) count matrix times the (identities x metrics)
per-identity sums; no Python loop over resamples.

**Paired difference of an experiment against the baseline**, per metric, runs paired by seed
(runs of one seed share whatever the seed fixes, such as stage-1 models when the baseline and
the experiment share stage 1, so pairing removes that part of the noise; without shared parts
it costs nothing):

- over seeds: ``d_s`` = metric(experiment, seed s) - metric(baseline, seed s) on the whole test
  set, ``D`` = mean of the ``d_s`` over the S seeds; seed variance ``a = sd(d_s)^2 / S`` with
  S - 1 degrees of freedom; t interval ``D +- t(S-1) sqrt(a)``. A t interval rather than a
  bootstrap over seeds: with 3 seeds a bootstrap has 10 distinct resamples, and its variance is
  2/3 of the sample variance with no allowance for estimating it from 3 values. The t interval
  is honest about that, and wide: t(2, 0.975) = 4.30, so its half-width is 4.30 / sqrt(3) =
  2.5 standard deviations of the per-seed differences.
- over queries: the same resampled identities applied to every run of both experiments; the B
  resampled values ``D*_b`` of ``D`` give a percentile interval (test set varied, trained models
  fixed).
- combined, the interval the verdict reads: the two errors of ``D`` (training seeds, test
  identities) are independent and add. Their sum's distribution is the query bootstrap's
  convolved with the seed error ``sqrt(a) T``, ``T`` following t(S-1): the equal mixture over
  the B resamples of t(S-1) distributions of scale ``sqrt(a)`` centred at each ``D*_b``, whose
  2.5% and 97.5% quantiles are found exactly by bisection (no extra random draws). It answers
  the question a researcher defends: would other seeds and another test set of people drawn
  alike give a difference of the same sign? Adding an independent symmetric unimodal error
  only widens central intervals (Anderson's theorem), so with near-symmetric parts it is
  wider than both the seed and the query interval, whereas a Welch-Satterthwaite t interval
  on the summed variances can come out narrower than the seed interval alone when the seeds
  dominate. The seed x identity interaction sits in both parts, so it errs on the wide side.
  A hierarchical bootstrap over seeds and identities was not chosen: over 3 seeds it inherits
  the too-narrow seed bootstrap above. With one seed ``a`` is unknown and the combined interval
  is the query interval (the test set only); the tables say so.
- verdict: "better" when the interval lies above zero, "worse" when below, else
  "no clear difference"; never from the point estimate. Every metric here is
  higher-is-better. Each metric is tested on its own, with no correction for multiple
  comparisons; a comparison row shows the verdict of one primary metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from pipeline.errors import PipelineError
from pipeline.evaluate.metrics import METRICS, QueryScores

CONFIDENCE = 0.95
RESAMPLES = 2000
BISECTIONS = 40  # halvings of a mixture quantile's bracket (at most 2 wide): to 2e-12
BETTER, WORSE, UNCLEAR = "better", "worse", "no clear difference"


@dataclass(frozen=True)
class IdentityBootstrap:
    """B resamples of a test set's identities, shared by every run evaluated on it."""

    codes: np.ndarray  # (queries,) column of each query's identity in counts; -1: no true match
    counts: np.ndarray  # (B, identities) times each identity is drawn, float64 for BLAS products


def identity_bootstrap(
    scores: QueryScores, resamples: int = RESAMPLES, seed: int = 0
) -> IdentityBootstrap:
    """Draw ``resamples`` resamples of the identities that have a valid query in ``scores``,
    each of the test set's size, with replacement; ``seed`` fixes the draws."""
    if resamples < 2:
        raise ValueError(f"resamples must be at least 2, got {resamples}")
    valid = scores.valid
    if not valid.any():
        raise ValueError("no query has a true match: there is nothing to resample")
    _, inverse = np.unique(np.asarray(scores.pid)[valid], return_inverse=True)
    identities = int(inverse.max()) + 1
    codes = np.full(len(valid), -1, dtype=np.int64)
    codes[valid] = inverse
    draws = np.random.default_rng(seed).integers(0, identities, size=(resamples, identities))
    draws += np.arange(resamples)[:, None] * identities  # one bincount slot per (resample, id)
    counts = np.bincount(draws.ravel(), minlength=resamples * identities)
    counts = counts.reshape(resamples, identities).astype(np.float64)
    return IdentityBootstrap(codes=codes, counts=counts)


def resampled_means(bootstrap: IdentityBootstrap, values: np.ndarray) -> np.ndarray:
    """(B x metrics) mean of ``values`` (queries x metrics) over the valid queries of each
    resample, a query weighted by the times its identity is drawn."""
    valid = bootstrap.codes >= 0
    codes = bootstrap.codes[valid]
    identities = bootstrap.counts.shape[1]
    width = values.shape[1]
    cells = (codes[:, None] * width + np.arange(width)).ravel()
    per_identity = np.empty((identities, width + 1))  # each identity's sums, then its size
    per_identity[:, :width] = np.bincount(
        cells, weights=values[valid].ravel(), minlength=identities * width
    ).reshape(identities, width)
    per_identity[:, width] = np.bincount(codes, minlength=identities)  # >= 1 query each
    totals = bootstrap.counts @ per_identity  # one product for the sums and the sizes
    return totals[:, :width] / totals[:, width:]


def percentile_interval(
    replicates: np.ndarray, confidence: float = CONFIDENCE
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper percentile bounds of ``replicates`` (B x metrics), per column."""
    tail = (1 - confidence) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail], axis=0)
    return low, high


def bootstrap_interval(
    scores: QueryScores,
    bootstrap: IdentityBootstrap,
    metrics: Sequence[str] = METRICS,
    confidence: float = CONFIDENCE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One run's metrics and their percentile interval over resampled identities:
    (value, low, high), one entry per metric."""
    low, high = percentile_interval(resampled_means(bootstrap, scores.values(metrics)), confidence)
    return scores.metrics(metrics), low, high


def check_same_queries(runs: Sequence[QueryScores], names: Sequence[str]) -> None:
    """Raise unless every run has the same queries (id and identity) in the same order, with
    the same queries having a true match; ``names`` name the runs in the message."""
    first, first_name = runs[0], names[0]
    for run, name in zip(runs[1:], names[1:], strict=True):
        if len(run.query) != len(first.query):
            raise PipelineError(
                f"{name} has {len(run.query)} queries but {first_name} has {len(first.query)}; "
                "paired comparisons need every run evaluated on the same queries: evaluate "
                "them on the same dataset index"
            )
        differ = (np.asarray(run.query) != np.asarray(first.query)) | (
            np.asarray(run.pid) != np.asarray(first.pid)
        )
        if differ.any():
            row = int(np.argmax(differ))
            raise PipelineError(
                f"{name} and {first_name} differ at query row {row} (query {run.query[row]}, "
                f"pid {run.pid[row]} vs query {first.query[row]}, pid {first.pid[row]}); "
                "paired comparisons need the same queries in the same order: evaluate every "
                "run on the same dataset index"
            )
        differ = run.valid != first.valid
        if differ.any():
            row = int(np.argmax(differ))
            raise PipelineError(
                f"query row {row} (query {run.query[row]}) has a true match in "
                f"{name if run.valid[row] else first_name} only; the runs were evaluated "
                "against different galleries: evaluate them on the same dataset index"
            )


@dataclass(frozen=True)
class PairedDifference:
    """Experiment minus baseline over paired seeds, one entry per metric (fractions)."""

    metrics: tuple[str, ...]
    seeds: int
    difference: np.ndarray  # D: mean over seeds of the per-seed differences
    seed_low: np.ndarray  # t interval over seeds (test set fixed); NaN with one seed
    seed_high: np.ndarray
    query_low: np.ndarray  # percentile interval over identities (trained models fixed)
    query_high: np.ndarray
    low: np.ndarray  # combined interval (seeds and test identities): the verdict's
    high: np.ndarray
    verdicts: tuple[str, ...]


def paired_difference(
    experiment: Sequence[QueryScores],
    baseline: Sequence[QueryScores],
    bootstrap: IdentityBootstrap,
    metrics: Sequence[str] = METRICS,
    confidence: float = CONFIDENCE,
) -> PairedDifference:
    """Difference of ``experiment`` against ``baseline``, runs paired by position (seed), with
    its seed, query and combined intervals and the verdict (see the module docstring).

    The runs must share the queries ``bootstrap`` was drawn for (:func:`check_same_queries`).
    """
    if not experiment or len(experiment) != len(baseline):
        raise ValueError(
            f"need the same number of runs, at least one, for the experiment ({len(experiment)}) "
            f"and the baseline ({len(baseline)})"
        )
    metrics = tuple(metrics)
    per_query = np.stack(
        [
            run.values(metrics) - base.values(metrics)
            for run, base in zip(experiment, baseline, strict=True)
        ]
    )  # seeds x queries x metrics
    seeds = len(per_query)
    per_seed = per_query[:, bootstrap.codes >= 0].mean(axis=1)
    difference = per_seed.mean(axis=0)
    replicates = resampled_means(bootstrap, per_query.mean(axis=0))
    query_low, query_high = percentile_interval(replicates, confidence)
    low, high = query_low.copy(), query_high.copy()
    seed_low = seed_high = np.full(len(metrics), np.nan)
    if seeds > 1:
        seed_se = per_seed.std(axis=0, ddof=1) / np.sqrt(seeds)
        half = stats.t.ppf((1 + confidence) / 2, seeds - 1) * seed_se
        seed_low, seed_high = difference - half, difference + half
        varies = seed_se > 0
        tail = (1 - confidence) / 2
        low[varies], high[varies] = t_mixture_quantiles(
            replicates[:, varies], seed_se[varies], seeds - 1, (tail, 1 - tail)
        )
    return PairedDifference(
        metrics=metrics,
        seeds=seeds,
        difference=difference,
        seed_low=seed_low,
        seed_high=seed_high,
        query_low=query_low,
        query_high=query_high,
        low=low,
        high=high,
        verdicts=tuple(verdict(lo, hi) for lo, hi in zip(low, high, strict=True)),
    )


def t_mixture_quantiles(
    centres: np.ndarray, scale: np.ndarray, dof: float, probabilities: Sequence[float]
) -> np.ndarray:
    """(probabilities x columns) quantiles of, per column m, the equal mixture over the rows b
    of ``centres`` (B x columns) of t(``dof``) distributions of scale ``scale[m]`` (> 0)
    centred at ``centres[b, m]``: the distribution of ``centres[b] + scale * T``, b drawn
    uniformly. Found by bisection between the quantiles of the lowest and highest centre."""
    probabilities = np.asarray(probabilities, dtype=np.float64)[:, None]
    quantile = stats.t.ppf(probabilities, dof) * scale
    low = centres.min(axis=0) + quantile
    high = centres.max(axis=0) + quantile
    for _ in range(BISECTIONS):
        middle = (low + high) / 2
        cdf = special.stdtr(dof, (middle - centres[:, None, :]) / scale).mean(axis=0)
        below = cdf < probabilities
        low = np.where(below, middle, low)
        high = np.where(below, high, middle)
    return (low + high) / 2


def verdict(low: float, high: float) -> str:
    """ "better" when the interval [low, high] of a higher-is-better difference lies above
    zero, "worse" when below, else "no clear difference"."""
    if low > 0:
        return BETTER
    if high < 0:
        return WORSE
    return UNCLEAR
