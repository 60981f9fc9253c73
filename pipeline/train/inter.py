"""Stage 2, inter-camera training (paper Sec. III-C, Algorithm 1 stage 2): its training set.

The refined labels (``pipeline refine``) name, for each training image, its pseudo label and
cluster weight; images labelled -1 (outliers of the global clustering, or discarded by the
refinement, Eq. 5) are left out of the epoch. Each epoch embeds the labelled images with the
current model to rebuild the cluster memory and trains with Eq. 9: the weighted contrastive loss
(Eq. 6; Eq. 3 with the weights off) plus beta times the camera domain loss (Eq. 7-8). The
baseline, +CA, +LR and CA+LR of Table III differ only in options: ``--no-camera-loss``,
``--no-cluster-weights`` and the refinement upstream (``refine --mode none``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.cluster.labels import renumber
from pipeline.errors import PipelineError
from pipeline.models import ReIDModel
from pipeline.train.options import TrainOptions
from pipeline.train.runner import EpochData, extract

MAX_NAMED = 5


@dataclass
class InterTrainingSet:
    """The labelled images of stage 2, as rows of the index's training split."""

    index_rows: np.ndarray  # (N,) index_row of each labelled image
    labels: np.ndarray  # (N,) pseudo label, contiguous 0..K-1
    weights: np.ndarray | None  # (N,) cluster weight (Eq. 6), None = all ones (Eq. 3)
    n_outliers: int  # rows of the table labelled -1

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max()) + 1


def training_cameras(index: pd.DataFrame) -> tuple[int, ...]:
    """The camids of the index's training split, sorted: the camera classifier's classes."""
    cameras = tuple(sorted(index.loc[index["split"] == "train", "camid"].unique().tolist()))
    if len(cameras) < 2:
        raise PipelineError(
            f"the training split has {len(cameras)} camera(s) {list(cameras)}; the camera "
            "classifier needs at least 2. Train without it (--no-camera-loss)"
        )
    return cameras


def inter_training_set(
    index: pd.DataFrame, table: pd.DataFrame, *, use_weights: bool, where: str
) -> InterTrainingSet:
    """Check the refined labels ``table`` against the dataset ``index`` and keep the labelled
    rows. ``where`` names the table in errors."""
    rows = table["index_row"].to_numpy(dtype=np.int64)
    train_rows = np.flatnonzero(index["split"].to_numpy() == "train")
    outside = ~np.isin(rows, train_rows)
    if outside.any():
        raise PipelineError(
            f"{where}: {int(outside.sum())} row(s) name index rows outside the index's training "
            f"split (first: {_named(rows[outside])}); the labels belong to another index: "
            "rerun the clustering and refinement"
        )
    duplicated = pd.Series(rows).duplicated().to_numpy()
    if duplicated.any():
        raise PipelineError(
            f"{where}: index rows listed more than once ({_named(rows[duplicated])}); "
            "the table is corrupt, rerun the refinement"
        )
    camids = table["camid"].to_numpy(dtype=np.int64)
    wrong_camera = camids != index["camid"].to_numpy(dtype=np.int64)[rows]
    if wrong_camera.any():
        raise PipelineError(
            f"{where}: camid disagrees with the index for index rows "
            f"{_named(rows[wrong_camera])}; the labels belong to another index"
        )
    labels = table["label"].to_numpy(dtype=np.int64)
    labelled = labels >= 0
    n_clusters = len(np.unique(labels[labelled]))
    if n_clusters < 2:
        raise PipelineError(
            f"{where}: {int(labelled.sum())} of {len(labels)} image(s) have a label, in "
            f"{n_clusters} cluster(s); training needs at least 2 clusters (every other image is "
            "-1, an outlier or discarded). Check the global clustering (e.g. a lower min_sim "
            "or min_size) or the refinement (a lower p0)"
        )
    weights = None
    if use_weights:
        weights = table["weight"].to_numpy(dtype=np.float64)[labelled]
        bad = ~np.isfinite(weights) | (weights < 0)
        if bad.any():
            raise PipelineError(
                f"{where}: cluster weights must be finite and >= 0; index rows "
                f"{_named(rows[labelled][bad])} are not. Rerun the refinement"
            )
    return InterTrainingSet(
        index_rows=rows[labelled],
        labels=renumber(labels[labelled]),
        weights=weights,
        n_outliers=int((~labelled).sum()),
    )


def summary_fields(summary: dict, prefix: str = "refine_") -> dict:
    """The scalar values of a (nested) JSON summary as flat log columns, e.g.
    ``{"quality": {"precision": 0.9}}`` -> ``{"refine_quality_precision": 0.9}``."""
    fields = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            fields.update(summary_fields(value, f"{prefix}{key}_"))
        elif value is None or isinstance(value, bool | int | float | str):
            fields[f"{prefix}{key}"] = value
    return fields


def inter_epoch(
    model: ReIDModel,
    paths: Sequence[str],
    training_set: InterTrainingSet,
    options: TrainOptions,
    log_fields: dict,
) -> EpochData:
    """Embed the labelled images with the current model (for the memory): one epoch's data.

    ``paths`` are the images of ``training_set.index_rows``, in that order; ``log_fields`` go
    into the epoch's log row.
    """
    return EpochData(
        labels=training_set.labels,
        features=extract(model, paths, options),
        weights=training_set.weights,
        stats={"n_outliers": training_set.n_outliers, **log_fields},
    )


def _named(values: np.ndarray) -> str:
    shown = ", ".join(map(str, values[:MAX_NAMED].tolist()))
    return f"{shown}, ... ({len(values)} in all)" if len(values) > MAX_NAMED else shown
