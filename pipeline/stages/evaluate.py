"""Retrieval metrics (mAP, CMC rank-1/5/10, mINP) of query features against gallery features.

Standard protocol: for each query, gallery images of the same identity from the same camera and
junk gallery images (pid -1) are ignored; queries left without a true match are skipped and
counted. With --rerank, distances are k-reciprocal re-ranked (Zhong et al. 2017) first.
Writes a one-row metrics table (docs/formats.md, Metrics) and logs the figures; with
--per-query also each query's scores (docs/formats.md, Per-query scores), which the comparison
resamples for its intervals. The distances and the ranking run on the GPU with --device cuda
(or auto, when one is visible), else with NumPy on the CPU; both give the same figures.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline import settings
from pipeline.errors import PipelineError
from pipeline.runtime import Device
from pipeline.settings import setting

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.evaluate.metrics import QueryScores, RetrievalMetrics

log = logging.getLogger(__name__)

REPORTED_RANKS = (1, 5, 10)


@dataclass(frozen=True)
class EvaluateOptions:
    """Retrieval on the query/gallery protocol (mAP, CMC, mINP)."""

    rerank: bool = setting(
        False, "k-reciprocal re-ranking of the query-gallery distances (Zhong et al. 2017)"
    )
    k1: int = setting(20, "re-ranking: k-reciprocal neighbours", minimum=1)
    k2: int = setting(6, "re-ranking: query expansion neighbours", minimum=1)
    lambda_value: float = setting(
        0.3,
        "re-ranking: weight of the original distance against the Jaccard distance",
        minimum=0,
        maximum=1,
        flag="--lambda",
    )
    max_rank: int = setting(
        10, "largest CMC rank computed and logged (the table reports rank-1, 5, 10)", minimum=10
    )
    every_round: bool = setting(
        False,
        "also evaluate the model of every round before the last, for the report's retrieval "
        "curve: monitoring only, the delivered model and the comparison stay the last epoch's",
        workflow_only=True,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, type=Path, help="dataset index table")
    parser.add_argument(
        "--query-features", required=True, type=Path, help="features of the query split (.h5)"
    )
    parser.add_argument(
        "--gallery-features", required=True, type=Path, help="features of the gallery split (.h5)"
    )
    parser.add_argument("--out", required=True, type=Path, help="metrics table to write (.csv)")
    parser.add_argument(
        "--per-query",
        type=Path,
        default=None,
        help="per-query table to write (.csv or .parquet): each query's AP, INP and rank of its "
        "first true match",
    )
    parser.add_argument(
        "--experiment",
        default=None,
        help="experiment name for the table (default: the one the features' checkpoint records)",
    )
    parser.add_argument("--dataset", default="unknown", help="dataset name for the table")
    parser.add_argument(
        "--epoch",
        type=int,
        default=None,
        help="epoch of the evaluated model (default: the one the features' checkpoint records)",
    )
    settings.add_arguments(parser, EvaluateOptions, "evaluation")
    settings.add_arguments(parser, Device, "device")


def run(args: argparse.Namespace) -> None:
    from pipeline.evaluate.metrics import evaluate_retrieval
    from pipeline.evaluate.rerank import k_reciprocal_distance_blocks
    from pipeline.features.store import read_features
    from pipeline.io import write_table
    from pipeline.tables import INDEX, METRICS

    options = settings.from_args(EvaluateOptions, args)
    device = retrieval_device(settings.from_args(Device, args))
    index = INDEX.read(args.index)
    query = read_features(args.query_features, index)
    gallery = read_features(args.gallery_features, index)
    for fs, split, path in (
        (query, "query", args.query_features),
        (gallery, "gallery", args.gallery_features),
    ):
        _check_split(index["split"].to_numpy()[fs.index_row], split, path)
    if query.features.shape[1] != gallery.features.shape[1]:
        raise PipelineError(
            f"{args.query_features} holds {query.features.shape[1]}-d features but "
            f"{args.gallery_features} holds {gallery.features.shape[1]}-d ones; extract both "
            "with the same model"
        )

    start = time.perf_counter()
    distance = None
    if options.rerank:
        distance = k_reciprocal_distance_blocks(
            query.features,
            gallery.features,
            k1=options.k1,
            k2=options.k2,
            lambda_value=options.lambda_value,
        )
    metrics = evaluate_retrieval(
        query.features,
        query.pid,
        query.camid,
        gallery.features,
        gallery.pid,
        gallery.camid,
        max_rank=options.max_rank,
        distance=distance,
        device=device,
    )
    seconds = time.perf_counter() - start
    if metrics.num_valid_query == 0:
        raise PipelineError(
            f"no query in {args.query_features} has a valid match in {args.gallery_features} "
            "(an image of the same identity from another camera, pid not -1); check that both "
            "files come from the same dataset's query and gallery splits and that pids are known"
        )
    # the checkpoint the features were extracted with says what it is (pipeline extract)
    experiment = args.experiment or query.attrs.get("experiment") or "unnamed"
    epoch = args.epoch if args.epoch is not None else int(query.attrs.get("epoch", -1))
    row = {
        "experiment": experiment,
        "dataset": args.dataset,
        "epoch": epoch,
        "seed": int(query.attrs.get("seed", -1)),
        "mAP": metrics.mAP,
        **{f"rank{k}": metrics.rank(k) for k in REPORTED_RANKS},
        "mINP": metrics.mINP,
        "num_query": metrics.num_query,
        "num_valid_query": metrics.num_valid_query,
        "reranking": options.rerank,
    }
    write_table(METRICS.frame(**{name: [value] for name, value in row.items()}), args.out)
    if args.per_query is not None:
        write_table(per_query_table(query.index_row, metrics.per_query), args.per_query)
    log.info("%s", _format_table(row, options, metrics, len(gallery), seconds))


def per_query_table(index_row: np.ndarray, scores: QueryScores) -> pd.DataFrame:
    """The per-query table (:data:`pipeline.tables.PER_QUERY`) of queries ``index_row`` (their
    rows in the dataset index, in evaluation order): AP (NaN without a true match), INP (0
    without one), the rank of the first true match (0 without one) and the identity."""
    from pipeline.tables import PER_QUERY

    valid = scores.valid
    return PER_QUERY.frame(
        query=index_row,
        pid=scores.pid,
        ap=np.where(valid, scores.ap, np.nan),
        inp=np.where(valid, scores.inp, 0.0),
        first_rank=scores.first_rank,
    )


def retrieval_device(where: Device) -> str | None:
    """The device of :func:`pipeline.evaluate.metrics.evaluate_retrieval` for the ``Device``
    settings ``where``: None (NumPy on the CPU) for cpu, and for auto without a visible GPU;
    else the CUDA device (checked to exist), with ``where.deterministic`` applied."""
    if where.device == "cpu":
        return None
    from pipeline.devices import visible_gpus

    if where.device == "auto" and not visible_gpus():  # without importing PyTorch
        return None
    from pipeline.features.extract import resolve_device
    from pipeline.runtime import set_determinism

    device = resolve_device(where.device)
    if device.type == "cpu":
        return None
    set_determinism(where.deterministic)
    return str(device)


def _check_split(splits: np.ndarray, expected: str, path: Path) -> None:
    wrong = np.flatnonzero(splits != expected)
    if len(wrong):
        found = ", ".join(sorted(set(splits[wrong].tolist())))
        raise PipelineError(
            f"{path}: {len(wrong)} of {len(splits)} feature rows belong to split {found}, not "
            f"{expected} (first at feature row {wrong[0]}); pass the features extracted with "
            f"`pipeline extract --split {expected}`"
        )


def _format_table(
    row: dict,
    options: EvaluateOptions,
    metrics: RetrievalMetrics,
    num_gallery: int,
    seconds: float,
) -> str:
    reranking = (
        f"k-reciprocal re-ranking k1={options.k1} k2={options.k2} lambda={options.lambda_value}"
        if options.rerank
        else "no re-ranking"
    )
    skipped = metrics.num_query - metrics.num_valid_query
    rows = [
        ("queries", f"{metrics.num_query} ({skipped} skipped: no match from another camera)"),
        ("gallery", f"{num_gallery}"),
        ("mAP", f"{100 * metrics.mAP:6.2f} %"),
        ("mINP", f"{100 * metrics.mINP:6.2f} %"),
    ]
    ranks = _logged_ranks(options.max_rank)
    rows += [(f"rank-{k}", f"{100 * metrics.rank(k):6.2f} %") for k in ranks]
    title = (
        f"retrieval of {row['experiment']} on {row['dataset']}, epoch {row['epoch']} "
        f"({reranking}), {seconds:.1f} s"
    )
    return "\n".join([title, *(f"  {label:<9} {value}" for label, value in rows)])


def _logged_ranks(max_rank: int) -> list[int]:
    """1, 5, 10 and then every tenth rank up to ``max_rank``."""
    return sorted({*REPORTED_RANKS, *range(10, max_rank + 1, 10), max_rank})
