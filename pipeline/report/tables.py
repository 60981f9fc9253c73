"""Result tables: the final metrics of an evaluated model, for people and as Markdown."""

from __future__ import annotations

import pandas as pd

from pipeline.errors import PipelineError
from pipeline.report.figures import percent
from pipeline.tables import METRIC_VALUES

DISPLAY_NAMES = {
    "experiment": "Experiment",
    "dataset": "Dataset",
    "epoch": "Epoch",
    "reranking": "Re-ranking",
    "mAP": "mAP",
    "rank1": "Rank-1",
    "rank5": "Rank-5",
    "rank10": "Rank-10",
    "mINP": "mINP",
}


def final_metrics(metrics: pd.DataFrame, source: str) -> pd.DataFrame:
    """The rows of the last evaluated model (highest ``epoch``): one, or one per re-ranking
    setting when both were evaluated. A missing ``reranking`` column means no re-ranking.

    ``source`` names the table in error messages.
    """
    if metrics.empty:
        raise PipelineError(f"{source}: no evaluated model in the table; run `pipeline evaluate`")
    metrics = metrics.assign(
        reranking=metrics["reranking"].astype(bool) if "reranking" in metrics else False
    )
    last = metrics[metrics["epoch"] == metrics["epoch"].max()]
    repeated = last["reranking"].duplicated()
    if repeated.any():
        raise PipelineError(
            f"{source}: epoch {last['epoch'].iloc[0]} is evaluated more than once with "
            f"reranking={bool(last['reranking'][repeated].iloc[0])}; keep one row per evaluated "
            "model (rerun `pipeline evaluate`)"
        )
    return last.sort_values("reranking", kind="stable").reset_index(drop=True)


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` for people: metrics as percentages with one decimal, re-ranking as yes/no,
    columns named as in the paper's tables."""
    shown = table.copy()
    for column in METRIC_VALUES:
        if column in shown:
            shown[column] = shown[column].map(percent)
    if "reranking" in shown:
        shown["reranking"] = shown["reranking"].map({True: "yes", False: "no"})
    return shown.rename(columns=DISPLAY_NAMES).astype(str)


def markdown_table(table: pd.DataFrame) -> str:
    """A pipe table of ``table``'s cells as they print; numeric-looking columns right-aligned."""
    header = [str(c) for c in table.columns]
    cells = [[str(v).replace("|", "\\|") for v in row] for row in table.itertuples(index=False)]

    def numeric(column: int) -> bool:
        values = [row[column] for row in cells if row[column] != "n/a"]
        return bool(values) and all(_is_number(v) for v in values)

    align = ["---:" if numeric(i) else "---" for i in range(len(header))]
    lines = [header, align, *cells]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines) + "\n"


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True
