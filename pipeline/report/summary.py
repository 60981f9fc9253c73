"""``summary.md``: what a run achieved and how it got there, in a few lines."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.report.embedding import CameraBias
from pipeline.report.refinement import CLUSTER_KINDS
from pipeline.report.tables import display_table, markdown_table

METRICS_SHOWN = ("epoch", "reranking", "mAP", "rank1", "rank5", "rank10", "mINP")

COUNT = "{:,.0f}"
FRACTION = "{:.3f}"


def trend(first: float, last: float, form: str) -> str:
    """``a -> b (falling)``-style text of a quantity's first and last value, each written
    with ``form`` (:data:`COUNT` or :data:`FRACTION`)."""
    if not (np.isfinite(first) and np.isfinite(last)):
        return "not available"
    direction = "falling" if last < first else "rising" if last > first else "flat"
    return f"{form.format(first)} -> {form.format(last)} ({direction})"


def _first_last(rounds: pd.DataFrame, column: str, form: str) -> str:
    values = rounds[column].dropna()
    if values.empty:
        return "not available"
    return trend(float(values.iloc[0]), float(values.iloc[-1]), form)


def summary_markdown(
    experiment: str,
    final: pd.DataFrame | None,
    epochs: pd.DataFrame,
    rounds: pd.DataFrame,
    quality: pd.DataFrame,
    biases: dict[str, CameraBias],
) -> str:
    """The summary of one experiment.

    ``final`` holds the last evaluated model's metrics rows (or None), ``epochs`` the
    concatenated training logs, ``rounds`` the per-round refinement counts, ``quality`` the
    cluster quality table and ``biases`` the camera bias of named feature sets.
    """
    lines = [f"# {experiment}: summary", "", "## Final metrics (%)", ""]
    if final is None or final.empty:
        lines.append("No evaluated model.")
    else:
        shown = final[[c for c in METRICS_SHOWN if c in final]]
        valid = final.get("num_valid_query")
        lines.append(markdown_table(display_table(shown)).rstrip())
        if valid is not None and "num_query" in final:
            lines += ["", f"Valid queries: {valid.iloc[0]:,} of {final['num_query'].iloc[0]:,}."]
    epoch_range = (
        f"epochs {epochs['epoch'].min()}-{epochs['epoch'].max()}" if len(epochs) else "no epochs"
    )
    lines += [
        "",
        "## Clusters and label refinement (first round -> last round)",
        "",
        f"- rounds: {epochs['round'].nunique()} ({epoch_range})",
        f"- global clusters: {_first_last(rounds, 'n_clusters', COUNT)}",
        f"- outliers: {_first_last(rounds, 'n_outliers', COUNT)}",
        f"- pivots: {_first_last(rounds, 'n_pivots', COUNT)}",
        f"- discard ratio: {_first_last(rounds, 'discard_ratio', FRACTION)}",
        f"- discard probability p: {_first_last(rounds, 'discard_probability', FRACTION)}",
    ]
    if len(quality):
        last = quality[quality["round"] == quality["round"].max()].set_index("clusters")
        fscores = ", ".join(
            f"{kind} {last.loc[kind, 'fscore']:.3f}" for kind in CLUSTER_KINDS if kind in last.index
        )
        lines.append(f"- pairwise F-score in the last round: {fscores}")
    else:
        lines.append("- cluster quality: not available (identities unknown)")
    lines += [
        "",
        "## Camera bias",
        "",
        "Mean cosine similarity of pairs of different identities, taken by the same camera or by "
        "different cameras; the gap is 0 without camera bias and should shrink with training.",
        "",
    ]
    table = pd.DataFrame(
        [
            {
                "features": name,
                "same camera": f"{bias.same_camera:.3f}",
                "cross camera": f"{bias.cross_camera:.3f}",
                "gap": f"{bias.gap:.3f}",
                "pairs (same / cross)": f"{bias.same_camera_pairs:,} / {bias.cross_camera_pairs:,}",
            }
            for name, bias in biases.items()
        ]
    )
    lines.append(markdown_table(table).rstrip())
    gaps = [b.gap for b in biases.values()]
    if len(gaps) >= 2:
        lines += ["", f"Gap: {trend(gaps[0], gaps[-1], FRACTION)}."]
    return "\n".join(lines) + "\n"
