"""Cluster all training images across cameras into global clusters (Infomap, DBSCAN, association).

Infomap (the paper) on the kNN graph: links to the --k nearest images with similarity at least
--min-sim, modules smaller than --min-size become outliers (-1). DBSCAN (ClusterContrast) on the
sparse k-reciprocal Jaccard distance (--k1, --k2, --eps, --min-samples). Association (CCAFL Eq.
12): each camera's identities of --local-labels joined across cameras when they are mutual
nearest identities closer than --threshold, the connected components as clusters. Writes the global
clusters table of docs/formats.md (index_row, camid, cluster) and a JSON summary with the
cluster counts and, when identities are known, the cluster quality (never used for training).
With --out-neighbours it also saves the kNN lists it searched, so that `pipeline refine` scores
the pivots (Eq. 4) on them instead of searching again (at a million images the search is most
of the stage's time).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import settings
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

# Quality diagnostics are reported when at least this fraction of rows has a known identity.
KNOWN_PID_FRACTION = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.cluster.clusterers import CLUSTERERS
    from pipeline.cluster.knn import NeighbourSearch
    from pipeline.runtime import Device, Seed

    parser.add_argument("--features", required=True, type=Path, help="HDF5 feature file")
    parser.add_argument("--out", required=True, type=Path, help="global clusters table")
    parser.add_argument("--summary", required=True, type=Path, help="JSON summary to write")
    parser.add_argument(
        "--out-neighbours",
        type=Path,
        help="also save the kNN lists (.npz) for `pipeline refine --neighbours`",
    )
    parser.add_argument(
        "--local-labels",
        type=Path,
        nargs="*",
        default=[],
        help="local-label tables (per camera, or collected) of the clusterers that associate "
        "each camera's identities (--method association)",
    )
    parser.add_argument(
        "--method",
        default="infomap",
        help=f"clustering method, one of: {', '.join(CLUSTERERS)} (default: infomap)",
    )
    for name, clusterer in CLUSTERERS.items():
        settings.add_arguments(parser, clusterer.options, f"{name} (--method {name})")
    settings.add_arguments(parser, NeighbourSearch, "neighbour search")
    settings.add_arguments(parser, Device, "device (neighbour search)")
    settings.add_arguments(parser, Seed, "seed (Infomap, index training)")


def run(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from pipeline.cluster.clusterers import CLUSTERERS
    from pipeline.cluster.knn import NeighbourSearch, knn
    from pipeline.features.store import read_features
    from pipeline.io import write_table
    from pipeline.runtime import Device, Seed, array_device
    from pipeline.tables import GLOBAL_CLUSTERS

    if args.method not in CLUSTERERS:
        raise PipelineError(f"--method must be one of {', '.join(CLUSTERERS)}, got {args.method}")
    clusterer = CLUSTERERS[args.method]
    options = settings.from_args(clusterer.options, args)
    search = settings.from_args(NeighbourSearch, args)
    seed = settings.from_args(Seed, args).seed
    device = array_device(settings.from_args(Device, args).device)
    fs = read_features(args.features)
    local = None
    if clusterer.local_labels:
        from pipeline.stages.collect_local_labels import aligned_local_labels

        if not args.local_labels:
            raise PipelineError(
                f"--method {args.method} clusters each camera's identities: pass their local "
                "labels with --local-labels"
            )
        local = aligned_local_labels(args.local_labels, fs.index_row, fs.camid)
    elif args.local_labels:
        raise PipelineError(f"--method {args.method} uses no local labels: drop --local-labels")
    neighbours = clusterer.neighbours(options)
    name = clusterer.neighbours_setting
    if name is not None:
        flag = "--" + name.replace("_", "-")
        if neighbours < 1:
            raise PipelineError(
                f"{flag} {getattr(options, name)} leaves no other image to link to (it counts "
                f"the image itself); raise {flag}"
            )
        warn_few_neighbours(flag, getattr(options, name), neighbours, len(fs), args.features)
    sims, idx = knn(fs.features, neighbours, search.knn, device=device, seed=seed)
    clusters = clusterer.cluster(fs.features, sims, idx, options, seed, fs.camid, local)
    params = asdict(options)
    write_table(
        GLOBAL_CLUSTERS.frame(index_row=fs.index_row, camid=fs.camid, cluster=clusters),
        args.out,
    )
    if args.out_neighbours:
        write_neighbours(
            args.out_neighbours,
            Neighbours(
                sims,
                idx,
                fs.index_row,
                fs.attrs.get("model"),
                clusterer.min_sim(options),
                clusterer.counts_self(options),
            ),
        )
    summary = {
        "method": args.method,
        **params,
        "knn": search.knn,
        "seed": seed,
        "n_images": len(fs),
        "n_clusters": int(clusters.max()) + 1 if len(clusters) else 0,
        "n_outliers": int((clusters < 0).sum()),
    }
    if local is not None:
        from pipeline.cluster.association import same_camera_merges

        summary["n_local_identities"] = int(len(np.unique(np.stack([fs.camid, local]), axis=1)[0]))
        summary["n_same_camera_merges"] = same_camera_merges(clusters, fs.camid, local)
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


@dataclass(frozen=True)
class Neighbours:
    """The kNN lists of the global clustering (rows in feature order, self excluded), the rows
    and model they were computed for, and how the clusterer read them: the weakest similarity
    of a graph link (None: no such threshold) and whether its neighbour setting counts the
    image itself."""

    similarities: np.ndarray
    indices: np.ndarray
    index_row: np.ndarray
    model: str
    min_sim: float | None
    k_counts_self: bool


def write_neighbours(path: Path, neighbours: Neighbours) -> None:
    """Save :class:`Neighbours` (``neighbours.npz``, docs/formats.md)."""
    from pipeline.io import atomic_output

    min_sim = np.nan if neighbours.min_sim is None else float(neighbours.min_sim)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            similarities=neighbours.similarities,
            indices=neighbours.indices,
            index_row=neighbours.index_row,
            model=np.array(str(neighbours.model)),
            min_sim=np.array(min_sim),
            k_counts_self=np.array(bool(neighbours.k_counts_self)),
        )


def read_neighbours(path: Path, index_row: np.ndarray, model) -> Neighbours:
    """The lists saved by :func:`write_neighbours`. Lists computed for other rows or another
    model's features, or written before the clusterer's settings were saved with them, are an
    error naming the file."""
    try:
        with np.load(path) as saved:
            found = Neighbours(
                saved["similarities"],
                saved["indices"],
                saved["index_row"],
                str(saved["model"]),
                float(saved["min_sim"]),
                bool(saved["k_counts_self"]),
            )
    except (OSError, KeyError, ValueError) as exc:
        raise PipelineError(
            f"{path}: cannot read the neighbour lists ({exc}); rerun `pipeline cluster-global` "
            "with --out-neighbours"
        ) from exc
    if not np.array_equal(found.index_row, index_row) or found.model != str(model):
        raise PipelineError(
            f"{path}: the neighbour lists were computed from other features (model "
            f"{found.model}, {len(found.index_row)} rows) than --features (model {model}, "
            f"{len(index_row)} rows); rerun `pipeline cluster-global` on these features"
        )
    if np.isnan(found.min_sim):
        return dataclasses.replace(found, min_sim=None)
    return found


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
