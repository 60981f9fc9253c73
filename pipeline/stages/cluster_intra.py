"""Cluster one camera's images into local labels (paper Sec. III-B, stage 1).

Average-linkage agglomerative clustering of the camera's features into images // --ratio local
clusters, on cosine or k-reciprocal Jaccard distance: a dense N x N matrix up to
--sparse-threshold images, a kNN-graph-constrained (sparse) linkage above it, which gives the
same clustering without the matrix (see pipeline/cluster/agglomerative.py). Writes the local
labels table of docs/formats.md: index_row, camid, local_label.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from pipeline import settings
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.cluster.agglomerative import LocalClustering

    parser.add_argument("--features", required=True, type=Path, help="HDF5 feature file")
    parser.add_argument("--camera", required=True, type=int, help="camid to cluster")
    parser.add_argument("--out", required=True, type=Path, help="local labels table to write")
    settings.add_arguments(parser, LocalClustering, "local clustering")


def run(args: argparse.Namespace) -> None:
    from pipeline.cluster.agglomerative import LocalClustering, camera_local_labels
    from pipeline.features.store import read_features
    from pipeline.io import write_table
    from pipeline.stages.cluster_global import warn_few_neighbours
    from pipeline.tables import LOCAL_LABELS

    options = settings.from_args(LocalClustering, args)
    fs = read_features(args.features)
    in_camera = fs.camid == args.camera
    if not in_camera.any():
        cameras = ", ".join(str(c) for c in np.unique(fs.camid))
        raise PipelineError(
            f"{args.features}: no image of camera {args.camera} (--camera); cameras present: "
            f"{cameras or 'none'}"
        )
    fs = fs.subset(in_camera)
    source = f"{args.features} (camera {args.camera})"
    if options.distance == "jaccard":  # k1 counts the image itself
        warn_few_neighbours("--k1", options.k1, options.k1 - 1, len(fs), source)
    elif len(fs) > options.sparse_threshold:
        warn_few_neighbours("--k", options.k, options.k, len(fs), source)
    labels = camera_local_labels(fs.features, options, args.camera)
    table = LOCAL_LABELS.frame(index_row=fs.index_row, camid=fs.camid, local_label=labels)
    write_table(table, args.out)
    log.info(
        "camera %d: %d images -> %d local clusters (%s, %s)",
        args.camera,
        len(fs),
        int(labels.max()) + 1,
        options.distance,
        "dense" if len(fs) <= options.sparse_threshold else "sparse",
    )
