"""Label refinement over rounds, from each round's refine summary (``refine.json``).

A summary holds the counts of the round (global clusters, outliers, pivots, discard probability
p, discarded samples, discard ratio) and, when ground-truth identities are known, the pairwise
quality of the global clusters, the refined clusters and the local clusters (Fig. 4): precision,
recall, F-score and expansion (the average number of clusters an identity is split over).
Missing keys become NaN, and a round without ``quality`` has no quality rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipeline.report.figures import new_figure, show_not_available

ROUND_KEYS = (
    "n_clusters",
    "n_outliers",
    "n_pivots",
    "discard_probability",
    "n_discarded",
    "discard_ratio",
)
CLUSTER_KINDS = ("global", "refined", "local")
QUALITY_KEYS = ("precision", "recall", "fscore", "expansion", "n_clusters")
KIND_COLORS = {"global": "tab:red", "refined": "tab:green", "local": "tab:blue"}
QUALITY_PANELS = {
    "precision": "pairwise precision",
    "recall": "pairwise recall",
    "fscore": "pairwise F-score",
    "expansion": "expansion (clusters per identity)",
}


def round_table(summaries: Sequence[dict]) -> pd.DataFrame:
    """One row per round (1 = first summary) with the refinement counts; NaN where absent."""
    rows = [
        {"round": r, **{key: summary.get(key, np.nan) for key in ROUND_KEYS}}
        for r, summary in enumerate(summaries, start=1)
    ]
    return pd.DataFrame(rows, columns=["round", *ROUND_KEYS])


def cluster_quality_table(summaries: Sequence[dict]) -> pd.DataFrame:
    """Long table of Fig. 4: one row per (round, clusters) with precision, recall, fscore,
    expansion and n_clusters; ``clusters`` is ``global``, ``refined`` or ``local``.

    Rounds whose summary has no ``quality`` (identities unknown) contribute no rows.
    """
    rows = []
    for r, summary in enumerate(summaries, start=1):
        quality = summary.get("quality") or {}
        for kind in CLUSTER_KINDS:
            if kind in quality:
                rows.append(
                    {
                        "round": r,
                        "clusters": kind,
                        **{key: quality[kind].get(key, np.nan) for key in QUALITY_KEYS},
                    }
                )
    return pd.DataFrame(rows, columns=["round", "clusters", *QUALITY_KEYS])


def plot_cluster_quality(table: pd.DataFrame, title: str) -> Figure:
    """Fig. 4 over rounds: one panel per metric, one line per kind of clusters.

    Good refinement shows the refined clusters above the global ones in precision and F-score
    and below them in expansion, approaching the local clusters.
    """
    fig = new_figure(16, 4.2)
    fig.suptitle(title)
    for ax, (metric, label) in zip(fig.subplots(1, 4), QUALITY_PANELS.items(), strict=True):
        ax.set_title(label)
        rows = table[table[metric].notna()] if metric in table else table.iloc[:0]
        if rows.empty:
            show_not_available(ax, "ground-truth identities")
            continue
        for kind in CLUSTER_KINDS:
            kind_rows = rows[rows["clusters"] == kind]
            if len(kind_rows):
                ax.plot(
                    kind_rows["round"],
                    kind_rows[metric],
                    marker="o",
                    color=KIND_COLORS[kind],
                    label=f"{kind} clusters",
                )
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if metric != "expansion":
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig
