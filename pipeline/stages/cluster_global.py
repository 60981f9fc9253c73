"""Cluster all training images across cameras into global clusters (Infomap or DBSCAN).

Infomap (the paper) on the kNN graph: links to the --k nearest images with similarity at least
--min-sim, modules smaller than --min-size become outliers (-1). DBSCAN (ClusterContrast) on the
sparse k-reciprocal Jaccard distance (--k1, --k2, --eps, --min-samples). Writes the global
clusters table of docs/formats.md (index_row, camid, cluster) and a JSON summary with the
cluster counts and, when identities are known, the cluster quality (never used for training).
With --out-neighbours it also saves the kNN lists it searched, so that `pipeline refine` scores
the pivots (Eq. 4) on them instead of searching again (at a million images the search is most
of the stage's time).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

# Quality diagnostics are reported when at least this fraction of rows has a known identity.
KNOWN_PID_FRACTION = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--features", required=True, type=Path, help="HDF5 feature file")
    parser.add_argument("--out", required=True, type=Path, help="global clusters table")
    parser.add_argument("--summary", required=True, type=Path, help="JSON summary to write")
    parser.add_argument(
        "--out-neighbours",
        type=Path,
        help="also save the kNN lists (.npz) for `pipeline refine --neighbours`",
    )
    parser.add_argument("--method", choices=("infomap", "dbscan"), default="infomap")
    parser.add_argument("--k", type=int, default=15, help="Infomap: neighbours per image")
    parser.add_argument("--min-sim", type=float, default=0.5, help="Infomap: weakest link kept")
    parser.add_argument("--min-size", type=int, default=4, help="Infomap: smallest cluster kept")
    parser.add_argument(
        "--tune-iterations",
        type=int,
        default=1,
        help="Infomap: limit on its fine/coarse tuning rounds (0: Infomap's default, no limit)",
    )
    parser.add_argument("--k1", type=int, default=30, help="DBSCAN: k-reciprocal Jaccard k1")
    parser.add_argument("--k2", type=int, default=6, help="DBSCAN: k-reciprocal Jaccard k2")
    parser.add_argument("--eps", type=float, default=0.6, help="DBSCAN: neighbourhood radius")
    parser.add_argument("--min-samples", type=int, default=4, help="DBSCAN: core point size")
    parser.add_argument(
        "--knn", choices=("exact", "ivf", "hnsw"), default="exact", help="neighbour search"
    )
    parser.add_argument("--seed", type=int, default=0, help="Infomap and index training seed")


def run(args: argparse.Namespace) -> None:
    from pipeline.cluster.dbscan import dbscan_clusters
    from pipeline.cluster.global_infomap import infomap_clusters
    from pipeline.cluster.knn import check_normalised, knn
    from pipeline.features.store import read_features
    from pipeline.io import write_table
    from pipeline.tables import GLOBAL_CLUSTERS

    check_options(args)
    fs = read_features(args.features)
    check_normalised(fs.features, str(args.features))
    if args.method == "infomap":
        warn_few_neighbours("--k", args.k, args.k, len(fs), args.features)
        sims, idx = knn(fs.features, args.k, args.knn, seed=args.seed)
        clusters = infomap_clusters(
            sims, idx, args.min_sim, args.min_size, args.seed, args.tune_iterations
        )
        params = {
            "k": args.k,
            "min_sim": args.min_sim,
            "min_size": args.min_size,
            "tune_iterations": args.tune_iterations,
        }
    else:  # k1 counts the image itself
        warn_few_neighbours("--k1", args.k1, args.k1 - 1, len(fs), args.features)
        sims, idx = knn(fs.features, max(args.k1, args.k2) - 1, args.knn, seed=args.seed)
        clusters = dbscan_clusters(fs.features, idx, args.k1, args.k2, args.eps, args.min_samples)
        params = {"k1": args.k1, "k2": args.k2, "eps": args.eps, "min_samples": args.min_samples}
    write_table(
        GLOBAL_CLUSTERS.frame(index_row=fs.index_row, camid=fs.camid, cluster=clusters),
        args.out,
    )
    if args.out_neighbours:
        write_neighbours(args.out_neighbours, sims, idx, fs.index_row, fs.attrs.get("model"))
    summary = {
        "method": args.method,
        **params,
        "knn": args.knn,
        "seed": args.seed,
        "n_images": len(fs),
        "n_clusters": int(clusters.max()) + 1 if len(clusters) else 0,
        "n_outliers": int((clusters < 0).sum()),
    }
    if pids_known(fs.pid):
        from pipeline.cluster.quality import cluster_quality

        summary["quality"] = cluster_quality(clusters, fs.pid).as_dict()
    write_summary(summary, args.summary)
    log.info(
        "%d images -> %d global clusters, %d outliers",
        len(fs),
        summary["n_clusters"],
        summary["n_outliers"],
    )


def check_options(args: argparse.Namespace) -> None:
    """Fail naming the option when a value cannot work (before any file is read)."""
    limits = (
        [("--k", args.k, 1), ("--min-size", args.min_size, 1), ("--seed", args.seed, 0)]
        if args.method == "infomap"
        else [("--k1", args.k1, 2), ("--k2", args.k2, 1), ("--min-samples", args.min_samples, 1)]
    )
    for option, value, least in limits + [("--tune-iterations", args.tune_iterations, 0)]:
        if value < least:
            raise PipelineError(f"{option} must be at least {least}, got {value}")
    if args.method == "dbscan" and not 0 < args.eps < 1:
        raise PipelineError(
            f"--eps must lie strictly between 0 and 1 (a Jaccard distance), got {args.eps}"
        )


def warn_few_neighbours(
    option: str, value: int, neighbours: int, n_images: int, source: os.PathLike | str
) -> None:
    """Warn when ``source`` has fewer other images than the ``neighbours`` per image that
    ``option value`` asks for: the missing ones are no links (pipeline.cluster.knn), so the
    setting means less than it says."""
    if neighbours >= n_images:
        log.warning(
            "%s %d asks for %d neighbours per image, but %s holds %d image(s): each image has "
            "only %d; lower %s for so small a dataset",
            option,
            value,
            neighbours,
            source,
            n_images,
            n_images - 1,
            option,
        )


def write_neighbours(
    path: Path, similarities: np.ndarray, indices: np.ndarray, index_row: np.ndarray, model
) -> None:
    """Save kNN lists (rows in feature order) with the rows and model they were computed for."""
    from pipeline.io import atomic_output

    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            similarities=similarities,
            indices=indices,
            index_row=index_row,
            model=np.array(str(model)),
        )


def read_neighbour_similarities(
    path: Path, index_row: np.ndarray, model, k: int
) -> np.ndarray | None:
    """The first ``k`` neighbour similarities of each row saved by :func:`write_neighbours`, or
    None when the file holds fewer than ``k`` per row. Lists computed for other rows or another
    model's features are an error naming the file."""
    try:
        with np.load(path) as saved:
            similarities, rows = saved["similarities"], saved["index_row"]
            saved_model = str(saved["model"])
    except (OSError, KeyError, ValueError) as exc:
        raise PipelineError(
            f"{path}: cannot read the neighbour lists ({exc}); rerun `pipeline cluster-global` "
            "with --out-neighbours"
        ) from exc
    if not np.array_equal(rows, index_row) or saved_model != str(model):
        raise PipelineError(
            f"{path}: the neighbour lists were computed from other features (model "
            f"{saved_model}, {len(rows)} rows) than --features (model {model}, {len(index_row)} "
            "rows); rerun `pipeline cluster-global` on these features"
        )
    if similarities.shape[1] < k:
        return None
    return similarities[:, :k]


def pids_known(pids: np.ndarray) -> bool:
    """Whether enough identities are known for the quality diagnostics to mean something."""
    return len(pids) > 0 and float(np.mean(pids >= 0)) >= KNOWN_PID_FRACTION


def write_summary(summary: dict, path: str | os.PathLike) -> None:
    """Write a stage's JSON summary atomically; NaN (a ratio of nothing) is written as null."""
    from pipeline.io import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(_nan_to_none(summary), indent=2) + "\n")


def _nan_to_none(value):
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, float) and np.isnan(value):
        return None
    return value
