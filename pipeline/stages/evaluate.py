"""Retrieval metrics (mAP, CMC rank-1/5/10, mINP) of query features against gallery features.

Standard protocol: for each query, gallery images of the same identity from the same camera and
junk gallery images (pid -1) are ignored; queries left without a true match are skipped and
counted. With --rerank, distances are k-reciprocal re-ranked (Zhong et al. 2017) first.
Writes a one-row metrics table (docs/formats.md, Metrics) and logs the figures.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.evaluate.metrics import RetrievalMetrics

log = logging.getLogger(__name__)

REPORTED_RANKS = (1, 5, 10)
# largest tolerated deviation of a feature's L2 norm from 1 (float16 storage rounds to ~1e-3)
NORM_TOLERANCE = 1e-2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, type=Path, help="dataset index table")
    parser.add_argument(
        "--query-features", required=True, type=Path, help="features of the query split (.h5)"
    )
    parser.add_argument(
        "--gallery-features", required=True, type=Path, help="features of the gallery split (.h5)"
    )
    parser.add_argument("--out", required=True, type=Path, help="metrics table to write (.csv)")
    parser.add_argument("--experiment", default="unnamed", help="experiment name for the table")
    parser.add_argument("--dataset", default="unknown", help="dataset name for the table")
    parser.add_argument(
        "--epoch", type=int, default=-1, help="epoch of the evaluated model (-1: not given)"
    )
    parser.add_argument(
        "--rerank",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="k-reciprocal re-ranking of the distances (default: off)",
    )
    parser.add_argument("--k1", type=int, default=20, help="re-ranking: k-reciprocal neighbours")
    parser.add_argument("--k2", type=int, default=6, help="re-ranking: query expansion neighbours")
    parser.add_argument(
        "--lambda",
        "--lambda-value",
        dest="lambda_value",
        type=float,
        default=0.3,
        help="re-ranking: weight of the original distance against the Jaccard distance",
    )
    parser.add_argument(
        "--max-rank", type=int, default=10, help="largest CMC rank computed and logged (>= 10)"
    )


def run(args: argparse.Namespace) -> None:
    from pipeline.evaluate.metrics import evaluate_retrieval
    from pipeline.evaluate.rerank import k_reciprocal_distance_blocks
    from pipeline.features.store import read_features
    from pipeline.io import write_table
    from pipeline.tables import INDEX, METRICS

    _check_options(args)
    index = INDEX.read(args.index)
    query = read_features(args.query_features, index)
    gallery = read_features(args.gallery_features, index)
    for fs, split, path in (
        (query, "query", args.query_features),
        (gallery, "gallery", args.gallery_features),
    ):
        _check_split(index["split"].to_numpy()[fs.index_row], split, path)
        _check_features(fs.features, path)
    if query.features.shape[1] != gallery.features.shape[1]:
        raise PipelineError(
            f"{args.query_features} holds {query.features.shape[1]}-d features but "
            f"{args.gallery_features} holds {gallery.features.shape[1]}-d ones; extract both "
            "with the same model"
        )

    start = time.perf_counter()
    distance = None
    if args.rerank:
        distance = k_reciprocal_distance_blocks(
            query.features, gallery.features, k1=args.k1, k2=args.k2, lambda_value=args.lambda_value
        )
    metrics = evaluate_retrieval(
        query.features,
        query.pid,
        query.camid,
        gallery.features,
        gallery.pid,
        gallery.camid,
        max_rank=args.max_rank,
        distance=distance,
    )
    seconds = time.perf_counter() - start
    if metrics.num_valid_query == 0:
        raise PipelineError(
            f"no query in {args.query_features} has a valid match in {args.gallery_features} "
            "(an image of the same identity from another camera, pid not -1); check that both "
            "files come from the same dataset's query and gallery splits and that pids are known"
        )
    row = {
        "experiment": args.experiment,
        "dataset": args.dataset,
        "epoch": args.epoch,
        "mAP": metrics.mAP,
        **{f"rank{k}": metrics.rank(k) for k in REPORTED_RANKS},
        "mINP": metrics.mINP,
        "num_query": metrics.num_query,
        "num_valid_query": metrics.num_valid_query,
        "reranking": bool(args.rerank),
    }
    write_table(METRICS.frame(**{name: [value] for name, value in row.items()}), args.out)
    log.info("%s", _format_table(args, metrics, len(gallery), seconds))


def _check_options(args: argparse.Namespace) -> None:
    if args.max_rank < max(REPORTED_RANKS):
        raise PipelineError(
            f"--max-rank {args.max_rank} is too small: the metrics table reports rank-"
            f"{max(REPORTED_RANKS)}, use --max-rank {max(REPORTED_RANKS)} or more"
        )
    if args.k1 < 1 or args.k2 < 1:
        raise PipelineError(f"--k1 and --k2 must be at least 1, got {args.k1} and {args.k2}")
    if not 0 <= args.lambda_value <= 1:
        raise PipelineError(f"--lambda must lie in [0, 1], got {args.lambda_value}")


def _check_split(splits: np.ndarray, expected: str, path: Path) -> None:
    wrong = np.flatnonzero(splits != expected)
    if len(wrong):
        found = ", ".join(sorted(set(splits[wrong].tolist())))
        raise PipelineError(
            f"{path}: {len(wrong)} of {len(splits)} feature rows belong to split {found}, not "
            f"{expected} (first at feature row {wrong[0]}); pass the features extracted with "
            f"`pipeline extract --split {expected}`"
        )


def _check_features(features: np.ndarray, path: Path) -> None:
    """Finite, L2-normalised rows: the distance 2 - 2 q.g is Euclidean only for unit vectors."""
    squared_norm = np.einsum("ij,ij->i", features, features, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(squared_norm))
    if len(bad):
        raise PipelineError(
            f"{path}: {len(bad)} feature row(s) hold NaN or infinite values, first at row "
            f"{bad[0]}; the model that extracted them diverged or the file is damaged, "
            "re-extract the features with a sound checkpoint"
        )
    off = np.flatnonzero(np.abs(np.sqrt(squared_norm) - 1) > NORM_TOLERANCE)
    if len(off):
        raise PipelineError(
            f"{path}: {len(off)} feature row(s) are not L2-normalised, first at row {off[0]} "
            f"(norm {np.sqrt(squared_norm[off[0]]):.4g}); write them with `pipeline extract`, "
            "which normalises"
        )


def _format_table(
    args: argparse.Namespace, metrics: RetrievalMetrics, num_gallery: int, seconds: float
) -> str:
    reranking = (
        f"k-reciprocal re-ranking k1={args.k1} k2={args.k2} lambda={args.lambda_value}"
        if args.rerank
        else "no re-ranking"
    )
    skipped = metrics.num_query - metrics.num_valid_query
    rows = [
        ("queries", f"{metrics.num_query} ({skipped} skipped: no match from another camera)"),
        ("gallery", f"{num_gallery}"),
        ("mAP", f"{100 * metrics.mAP:6.2f} %"),
        ("mINP", f"{100 * metrics.mINP:6.2f} %"),
    ]
    rows += [(f"rank-{k}", f"{100 * metrics.rank(k):6.2f} %") for k in _logged_ranks(args.max_rank)]
    title = (
        f"retrieval of {args.experiment} on {args.dataset}, epoch {args.epoch} ({reranking}), "
        f"{seconds:.1f} s"
    )
    return "\n".join([title, *(f"  {label:<9} {value}" for label, value in rows)])


def _logged_ranks(max_rank: int) -> list[int]:
    """1, 5, 10 and then every tenth rank up to ``max_rank``."""
    return sorted({*REPORTED_RANKS, *range(10, max_rank + 1, 10), max_rank})
