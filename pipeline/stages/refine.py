"""Refine the global clusters with pivots and local labels for one epoch (paper Eq. 4-6).

Selects the pivots (Eq. 4) on the current features, discards the members of each pivot's global
cluster and camera that share no local cluster with a pivot (--pivot-rule: how several pivots of
one cluster and camera decide), each with probability p from --schedule (Eq. 5; --mode
reference: the released code's pivot scores on the global graph's links, one pivot per cluster
and p = --p0), and attaches each sample's cluster weight (Eq. 6). Writes the refined labels table of
docs/formats.md and a JSON summary (pivots, discards, p; cluster quality of the global, refined
and local labels when identities are known).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import settings
from pipeline.cluster.labels import first_rows
from pipeline.cluster.refine import PIVOT_RULES
from pipeline.cluster.schedules import SCHEDULES
from pipeline.errors import PipelineError
from pipeline.settings import setting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefineOptions:
    """Camera-aware label refinement with pivots and local labels (Eq. 4-5)."""

    mode: str = setting(
        "paper",
        "paper: Eq. 4-5 as the paper states them, every pivot counts (--pivot-rule); "
        "reference: the released code (pivot scores on the global graph's links, one pivot per "
        "cluster, fixed p); none: no refinement, the global clusters are the labels (baseline)",
        choices=("paper", "reference", "none"),
    )
    pivot_rule: str = setting(
        "any",
        "mode paper, when one cluster and camera holds pivots in different local clusters: "
        "any = a member is kept if any pivot vouches for it; each = Eq. 5 once per pivot, kept "
        "only if every pivot vouches; best = only the highest-scoring pivot decides",
        choices=PIVOT_RULES,
    )
    schedule: str = setting(
        "cosine",
        "decay of the discard probability p over epochs (Table IV; ignored by mode reference)",
        choices=SCHEDULES,
    )
    p0: float = setting(1.0, "discard probability at epoch 0", minimum=0, maximum=1)
    cosine_span: float = setting(
        1.0,
        "the cosine schedule's half period in units of the epochs, p = p0 (1 + cos(pi e / "
        "(s E))) / 2: 1 falls to about 0 by the last epoch; the released code's commented-out "
        "decay: 3",
        exclusive_minimum=0,
    )
    pivot_k: int = setting(
        15,
        "neighbours in the pivot score (Eq. 4: the paper's top 15); mode reference counts the "
        "image itself (15 = 14 others), as the released code",
        minimum=1,
    )
    weight_floor: float = setting(
        0.0,
        "smallest cluster weight of Eq. 6, w = max(ln(1 + H), floor), written with the labels; "
        "0 = the paper and the released code (a single-camera cluster gets weight 0)",
        minimum=0,
        maximum=1,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.cluster.knn import NeighbourSearch
    from pipeline.runtime import Seed

    parser.add_argument("--clusters", required=True, type=Path, help="global clusters table")
    parser.add_argument("--features", required=True, type=Path, help="HDF5 feature file")
    parser.add_argument(
        "--local-labels",
        type=Path,
        nargs="*",
        default=[],
        help="local labels tables, one per camera (concatenated); not with --mode none",
    )
    parser.add_argument("--epoch", type=int, default=0, help="0-based inter-camera epoch")
    parser.add_argument("--total-epochs", type=int, default=1, help="inter-camera epochs")
    parser.add_argument(
        "--neighbours",
        type=Path,
        help="kNN lists of these features from `pipeline cluster-global --out-neighbours` "
        "(used for Eq. 4 when they hold enough neighbours, else searched again; --mode "
        "reference needs them: it scores only the graph's links, whose min_sim they record)",
    )
    parser.add_argument("--out", required=True, type=Path, help="refined labels table")
    parser.add_argument("--summary", required=True, type=Path, help="JSON summary to write")
    settings.add_arguments(parser, RefineOptions, "refinement")
    settings.add_arguments(parser, NeighbourSearch, "neighbour search (when --neighbours is short)")
    settings.add_arguments(parser, Seed, "seed of the discard draws")


def run(args: argparse.Namespace) -> None:
    from pipeline.cluster.knn import NeighbourSearch
    from pipeline.cluster.quality import discard_ratio
    from pipeline.cluster.refine import refine_epoch
    from pipeline.cluster.schedules import discard_probability
    from pipeline.cluster.weights import sample_weights
    from pipeline.features.store import read_features
    from pipeline.io import write_table
    from pipeline.runtime import Seed
    from pipeline.stages.cluster_global import warn_few_neighbours, write_summary
    from pipeline.stages.collect_local_labels import aligned_local_labels
    from pipeline.tables import REFINED_LABELS

    options = settings.from_args(RefineOptions, args)
    search = settings.from_args(NeighbourSearch, args)
    seed = settings.from_args(Seed, args).seed
    fs = read_features(args.features)
    if options.mode != "none":
        warn_few_neighbours("--pivot-k", options.pivot_k, options.pivot_k, len(fs), args.features)
    clusters = aligned_clusters(args.clusters, fs.index_row, fs.camid)
    if options.mode == "none":
        if args.local_labels:
            raise PipelineError("--mode none refines nothing: do not pass --local-labels")
        local = None
        schedule, p = "none", 0.0
        labels, discarded = clusters.copy(), np.zeros(len(fs), dtype=bool)
        pivots, mean_distance = np.zeros(len(fs), dtype=bool), None
    else:
        if not args.local_labels:
            raise PipelineError(
                f"--mode {options.mode} needs --local-labels (one table per camera, from stage 1)"
            )
        local = aligned_local_labels(args.local_labels, fs.index_row, fs.camid)
        schedule = "none" if options.mode == "reference" else options.schedule
        if schedule != options.schedule:
            log.info(
                "--mode reference keeps p = --p0 fixed; --schedule %s ignored", options.schedule
            )
        p = discard_probability(
            args.epoch, args.total_epochs, schedule, options.p0, cosine_span=options.cosine_span
        )
        rng = np.random.default_rng([seed, args.epoch])
        similarities, min_sim = saved_neighbours(args.neighbours, fs, options)
        result = refine_epoch(
            fs.features,
            clusters,
            fs.camid,
            local,
            p,
            rng,
            options.mode,
            options.pivot_k,
            search.knn,
            similarities,
            pivot_rule=options.pivot_rule,
            min_sim=min_sim,
        )
        labels, discarded, pivots = result.labels, result.discarded, result.pivots
        mean_distance = result.mean_distance
    weights = sample_weights(labels, fs.camid, options.weight_floor)

    table = REFINED_LABELS.frame(
        index_row=fs.index_row,
        camid=fs.camid,
        cluster=clusters,
        label=labels,
        pivot=pivots,
        discarded=discarded,
        weight=weights,
    )
    write_table(table, args.out)
    summary = {
        "mode": options.mode,
        "schedule": schedule,
        "epoch": args.epoch,
        "total_epochs": args.total_epochs,
        "p0": options.p0,
        "discard_probability": p,
        "pivot_k": options.pivot_k,
        "pivot_rule": options.pivot_rule if options.mode == "paper" else None,
        "weight_floor": options.weight_floor,
        "mean_distance": mean_distance,
        "n_images": len(fs),
        "n_clusters": int(labels.max()) + 1 if len(labels) else 0,
        "n_clusters_global": int(clusters.max()) + 1 if len(clusters) else 0,
        "n_outliers": int((clusters < 0).sum()),
        "n_pivots": int(pivots.sum()),
        "n_discarded": int(discarded.sum()),
        "discard_ratio": discard_ratio(clusters, discarded),
    }
    summary.update(_quality(fs, clusters, labels, local))
    write_summary(summary, args.summary)
    log.info(
        "epoch %d: p=%.3f, %d pivots, %d of %d clustered images discarded",
        args.epoch,
        p,
        summary["n_pivots"],
        summary["n_discarded"],
        int((clusters >= 0).sum()),
    )


def saved_neighbours(
    path: Path | None, fs, options: RefineOptions
) -> tuple[np.ndarray | None, float | None]:
    """The kNN similarities of ``--neighbours`` that Eq. 4 scores in ``options.mode`` (None:
    the file holds too few, search again) and, in mode reference, the global graph's
    ``min_sim`` recorded with them (None in mode paper)."""
    from pipeline.stages.cluster_global import read_neighbours

    reference = options.mode == "reference"
    if path is None:
        if reference:
            raise PipelineError(
                "--mode reference scores the pivots on the global graph's links (similarity at "
                "least its min_sim), as the released code: pass --neighbours, the lists that "
                "`pipeline cluster-global --out-neighbours` saved with that threshold"
            )
        return None, None
    saved = read_neighbours(path, fs.index_row, fs.attrs.get("model"))
    min_sim = None
    if reference:
        if saved.min_sim is None:
            raise PipelineError(
                f"{path}: these neighbour lists come from a clusterer without a similarity "
                "threshold (dbscan); --mode reference scores the pivots on Infomap's links: "
                "cluster with --method infomap, or refine with --mode paper"
            )
        min_sim = saved.min_sim
        if not saved.k_counts_self:
            log.warning(
                "%s: the global graph's k did not count the image itself, the released code's "
                "did (cluster-global --k-counts-self); --mode reference scores --pivot-k %d "
                "counting the image all the same",
                path,
                options.pivot_k,
            )
    needed = options.pivot_k - 1 if reference else options.pivot_k
    if saved.similarities.shape[1] < needed:
        log.info("%s holds fewer than %d neighbours: searching", path, needed)
        return None, min_sim
    return saved.similarities[:, :needed], min_sim


def aligned_clusters(path: Path, index_row: np.ndarray, camid: np.ndarray) -> np.ndarray:
    """The ``cluster`` column of the global clusters table, in feature row order."""
    from pipeline.stages.collect_local_labels import check_cameras
    from pipeline.tables import GLOBAL_CLUSTERS

    table = GLOBAL_CLUSTERS.read(path)
    if len(table) != len(index_row):
        raise PipelineError(
            f"{path}: {len(table)} rows but the features have {len(index_row)}; the clusters "
            "were computed from other features, rerun `pipeline cluster-global` on these"
        )
    if table["index_row"].duplicated().any():
        first = int(table.loc[table["index_row"].duplicated(), "index_row"].iloc[0])
        raise PipelineError(f"{path}: index_row {first} appears more than once")
    rows = pd.Index(table["index_row"]).get_indexer(index_row)
    if (rows < 0).any():
        raise PipelineError(
            f"{path}: no row for index_row {first_rows(index_row[rows < 0])} of the features; "
            "the clusters were computed from other features, rerun `pipeline cluster-global`"
        )
    check_cameras(table["camid"].to_numpy()[rows], camid, index_row, path)
    return table["cluster"].to_numpy(dtype=np.int64)[rows]


def _quality(fs, clusters: np.ndarray, labels: np.ndarray, local: np.ndarray | None) -> dict:
    """Cluster quality of the global, refined and local labels, when identities are known."""
    from pipeline.cluster.quality import cluster_quality
    from pipeline.stages.cluster_global import pids_known

    if not pids_known(fs.pid):
        return {}
    quality = {
        "global": cluster_quality(clusters, fs.pid).as_dict(),
        "refined": cluster_quality(labels, fs.pid).as_dict(),
    }
    if local is not None:
        local_ids = np.unique(np.stack([fs.camid, local]), axis=1, return_inverse=True)[1].ravel()
        quality["local"] = cluster_quality(local_ids, fs.pid).as_dict()
    return {"quality": quality}
