"""Retrieval examples (Fig. 7): a few queries with their top-ranked gallery images.

The ranking is the evaluation protocol's, computed directly: cosine similarity of L2-normalised
embeddings (a plain matrix product, highest first, ties in gallery order), after removing the
gallery images of the query's identity taken by the query's camera and the junk images
(pid -1). A gallery image is right when its identity is the query's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pipeline.features.store import FeatureSet
from pipeline.report.figures import new_figure

TOP_K = 10
RIGHT_COLOR = "tab:green"
WRONG_COLOR = "tab:red"
QUERY_COLOR = "0.2"


@dataclass(frozen=True)
class Ranking:
    """Top-k gallery images of each query; rows of (Q, k) arrays follow the queries."""

    gallery_rows: np.ndarray  # int64 row of the gallery FeatureSet, -1 where none is left
    similarity: np.ndarray  # float32 cosine similarity, NaN where none is left
    correct: np.ndarray  # bool, the gallery image shows the query's identity


def rank_gallery(query: FeatureSet, gallery: FeatureSet, top_k: int = TOP_K) -> Ranking:
    """Rank ``gallery`` for every row of ``query`` and keep the top ``top_k`` valid images.

    Meant for a few queries: it holds a (Q, G) similarity matrix.
    """
    similarity = query.features @ gallery.features.T
    ignored = (gallery.pid[None, :] < 0) | (
        (gallery.pid[None, :] == query.pid[:, None])
        & (gallery.camid[None, :] == query.camid[:, None])
    )
    order = np.argsort(np.where(ignored, np.inf, -similarity), axis=1, kind="stable")[:, :top_k]
    kept = ~np.take_along_axis(ignored, order, axis=1)
    rows = np.where(kept, order, -1)
    return Ranking(
        gallery_rows=rows,
        similarity=np.where(kept, np.take_along_axis(similarity, order, axis=1), np.nan),
        correct=kept & (gallery.pid[order] == query.pid[:, None]) & (query.pid[:, None] >= 0),
    )


def queries_with_match(query: FeatureSet, gallery: FeatureSet) -> np.ndarray:
    """Boolean mask of the queries that have a true match: a gallery image of their identity
    taken by another camera (the queries the evaluation protocol keeps)."""
    seen = pd.DataFrame({"pid": gallery.pid, "camid": gallery.camid})
    seen = seen[seen["pid"] >= 0].drop_duplicates()
    cameras_per_pid = seen.groupby("pid").size()
    cameras = pd.Series(query.pid).map(cameras_per_pid).fillna(0).to_numpy()
    own_camera = pd.MultiIndex.from_arrays([query.pid, query.camid]).isin(
        pd.MultiIndex.from_frame(seen)
    )
    return (query.pid >= 0) & (cameras - own_camera > 0)


def choose_queries(query: FeatureSet, gallery: FeatureSet, count: int, seed: int) -> np.ndarray:
    """``count`` query rows drawn with ``seed`` among those with a true match (all queries if
    none has one), in increasing order."""
    candidates = np.flatnonzero(queries_with_match(query, gallery))
    if not len(candidates):
        candidates = np.arange(len(query))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(candidates, size=min(count, len(candidates)), replace=False))


@dataclass(frozen=True)
class RetrievalRow:
    """One line of the figure: a query image and its ranked gallery images."""

    query_image: np.ndarray  # (H, W, 3) uint8
    query_pid: int
    query_camid: int
    gallery_images: Sequence[np.ndarray]
    gallery_pids: Sequence[int]
    gallery_camids: Sequence[int]
    correct: Sequence[bool]


def plot_retrieval(rows: Sequence[RetrievalRow], title: str, top_k: int = TOP_K) -> Figure:
    """Grid of Fig. 7: query on the left, then its top ``top_k`` gallery images, green border
    for the right identity and red for a wrong one; every image is captioned with id and
    camera."""
    fig = new_figure(1.15 * (top_k + 1.3), 2.5 * len(rows) + 0.5)
    fig.suptitle(f"{title}\ngreen: same identity as the query, red: another identity")
    axes = fig.subplots(len(rows), top_k + 2, squeeze=False, width_ratios=[1, 0.3] + [1] * top_k)
    for line, row in zip(axes, rows, strict=True):
        line[1].set_axis_off()
        _show_image(line[0], row.query_image, QUERY_COLOR)
        line[0].set_title(f"query\nid {row.query_pid} cam {row.query_camid}", fontsize=8)
        for rank, ax in enumerate(line[2:], start=1):
            if rank > len(row.gallery_images):
                ax.set_axis_off()
                continue
            right = row.correct[rank - 1]
            _show_image(ax, row.gallery_images[rank - 1], RIGHT_COLOR if right else WRONG_COLOR)
            ax.set_title(
                f"#{rank}\nid {row.gallery_pids[rank - 1]} cam {row.gallery_camids[rank - 1]}",
                fontsize=8,
            )
    return fig


def _show_image(ax, image: np.ndarray, border: str) -> None:
    ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(border)
        spine.set_linewidth(4)
