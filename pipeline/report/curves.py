"""Per-epoch training curves (Fig. 6 of the paper): losses, clusters, discard ratio, mAP.

The training log of each round is one table with a row per epoch (docs/formats.md); the rounds
are concatenated in order into one table, which is both ``epochs.csv`` and the curves' data.
Columns other than ``epoch`` are optional: a panel whose columns are all absent says so. The
retrieval panel plots the delivered model's metrics and, with ``evaluate.every_round``, those
of every earlier round's model (:func:`retrieval_curve`), for monitoring only.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipeline.errors import PipelineError
from pipeline.report.figures import new_figure, show_not_available

# the training loop logs each loss term as loss_<name> (pipeline/train/losses.py) and their
# weighted sum as loss_total
LOSS_PREFIX = "loss_"
# stage 2 logs carry the refinement summary under this prefix (pipeline.train.inter)
REFINE_PREFIX = "refine_"
CLUSTER_COLUMNS = {
    "n_clusters": "global clusters",
    "n_outliers": "outliers",
    f"{REFINE_PREFIX}n_pivots": "pivots",
}
REFINE_COLUMNS = {
    f"{REFINE_PREFIX}discard_ratio": "discard ratio",
    f"{REFINE_PREFIX}discard_probability": "discard probability p",
}


def concat_train_logs(logs: Sequence[pd.DataFrame], sources: Sequence[str]) -> pd.DataFrame:
    """All rounds' training logs as one table, with a ``round`` column (1 = first log).

    Within a round the rows are sorted by ``epoch``; epochs must be unique in a round and each
    round must start after the previous one ended, so that the table reads in training order.
    ``sources`` names each log (its file) in error messages.
    """
    frames = []
    last_epoch, last_source = None, None
    for round_number, (log, source) in enumerate(zip(logs, sources, strict=True), start=1):
        log = log.sort_values("epoch", kind="stable").reset_index(drop=True)
        repeated = log["epoch"][log["epoch"].duplicated()]
        if len(repeated):
            raise PipelineError(
                f"{source}: epoch {repeated.iloc[0]} appears more than once; a training log has "
                "one row per epoch, rerun the round that wrote it"
            )
        if len(log) and last_epoch is not None and log["epoch"].iloc[0] <= last_epoch:
            raise PipelineError(
                f"{source}: round {round_number} starts at epoch {log['epoch'].iloc[0]} but the "
                f"previous round ({last_source}) ended at epoch {last_epoch}; pass the training "
                "logs in round order (option --train-logs)"
            )
        if len(log):
            last_epoch, last_source = log["epoch"].iloc[-1], source
        frames.append(log.assign(round=round_number))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["epoch"])
    first = ["round", "epoch"]
    return table[first + [c for c in table.columns if c not in first]]


MONITORING_NOTE = "monitoring only: the delivered model is the last epoch's"


def retrieval_curve(metrics: Sequence[pd.DataFrame], sources: Sequence[str]) -> pd.DataFrame:
    """The retrieval panel's points: the rows of the metrics tables ``metrics`` (columns of
    metrics.csv), the last table the delivered model's and the others those of earlier rounds'
    models, in epoch order, with a ``delivered`` column (True: the last table's last epoch).

    Every earlier round's epoch must come before the delivered model's, and no epoch may be
    evaluated twice with the same ``reranking`` (absent: no re-ranking). ``sources`` names each
    table (its file) in error messages.
    """
    *rounds, final = metrics
    *round_sources, final_source = sources
    delivered = final["epoch"].max() if len(final) else None
    for table, source in zip(rounds, round_sources, strict=True):
        if delivered is not None and (table["epoch"] >= delivered).any():
            raise PipelineError(
                f"{source}: epoch {table['epoch'].max()} is not before the delivered model's epoch "
                f"{delivered} ({final_source}); pass the metrics of the rounds before the last "
                "(option --round-metrics)"
            )
    frames = [
        table.assign(
            reranking=table["reranking"].astype(bool) if "reranking" in table else False,
            source=source,
        )
        for table, source in zip(metrics, sources, strict=True)
        if len(table)
    ]
    if not frames:
        return final.assign(delivered=pd.Series(dtype=bool))
    curve = pd.concat(frames, ignore_index=True)
    repeated = curve[curve.duplicated(["epoch", "reranking"])]
    if len(repeated):
        first = repeated.iloc[0]
        raise PipelineError(
            f"{first['source']}: epoch {first['epoch']} is evaluated more than once with "
            f"reranking={first['reranking']}; pass each round's metrics once (options --metrics "
            "and --round-metrics)"
        )
    curve = curve.sort_values(["epoch", "reranking"], kind="stable", ignore_index=True)
    return curve.drop(columns="source").assign(delivered=curve["epoch"] == delivered)


def _plot_columns(
    ax: Axes, frame: pd.DataFrame, columns: dict[str, str], title: str, ylabel: str
) -> None:
    """Plot each present, non-empty column of ``frame`` against its epoch; else say so."""
    ax.set_title(title)
    present = [c for c in columns if c in frame.columns and frame[c].notna().any()]
    if not present:
        show_not_available(ax, ", ".join(columns))
        return
    for column in present:
        rows = frame[frame[column].notna()]
        ax.plot(rows["epoch"], rows[column], marker="o", markersize=3, label=columns[column])
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def loss_columns(epochs: pd.DataFrame) -> dict[str, str]:
    """Every logged loss term by its name, the weighted total last."""
    names = [c for c in epochs.columns if c.startswith(LOSS_PREFIX) and c != "loss_total"]
    columns = {column: column.removeprefix(LOSS_PREFIX) for column in names}
    return {**columns, "loss_total": "total (weighted sum, Eq. 9)"}


def plot_curves(epochs: pd.DataFrame, metrics: pd.DataFrame | None, title: str) -> Figure:
    """Four panels over training epochs: losses; global clusters, outliers and pivots; discard
    ratio and discard probability p (Eq. 5); mAP and rank-1 of the evaluated models.

    ``epochs`` is :func:`concat_train_logs`' table; ``metrics`` has the columns of metrics.csv
    (``epoch``, ``mAP``, ``rank1``, optional ``reranking``), such as :func:`retrieval_curve`'s
    table, or is None. A panel with more than one evaluated epoch says it is for monitoring
    only.
    """
    fig = new_figure(12, 8)
    fig.suptitle(title)
    ax_loss, ax_clusters, ax_refine, ax_map = fig.subplots(2, 2).ravel()
    _plot_columns(ax_loss, epochs, loss_columns(epochs), "Losses", "loss")
    _plot_columns(ax_clusters, epochs, CLUSTER_COLUMNS, "Clusters", "count")
    _plot_columns(ax_refine, epochs, REFINE_COLUMNS, "Label refinement", "fraction")
    if ax_refine.has_data():
        ax_refine.set_ylim(-0.02, 1.02)
    _plot_metrics(ax_map, metrics)
    return fig


def _plot_metrics(ax: Axes, metrics: pd.DataFrame | None) -> None:
    ax.set_title("Retrieval on query/gallery")
    if metrics is None or metrics.empty:
        show_not_available(ax, "mAP (no evaluated model)")
        return
    metrics = metrics.sort_values("epoch", kind="stable")
    if metrics["epoch"].nunique() > 1:
        ax.set_title(f"Retrieval on query/gallery\n({MONITORING_NOTE})")
    reranking = metrics["reranking"] if "reranking" in metrics else pd.Series(False, metrics.index)
    for reranked, rows in metrics.groupby(reranking.astype(bool), sort=True):
        suffix = " (re-ranked)" if reranked else ""
        style = "--" if reranked else "-"
        fill = "none" if reranked else "full"
        for column, name, color, marker in (
            ("mAP", "mAP", "tab:blue", "o"),
            ("rank1", "rank-1", "tab:orange", "s"),
        ):
            ax.plot(
                rows["epoch"],
                100 * rows[column],
                style,
                color=color,
                marker=marker,
                fillstyle=fill,
                label=f"{name}{suffix}",
            )
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
