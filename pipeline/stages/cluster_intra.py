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

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--features", required=True, type=Path, help="HDF5 feature file")
    parser.add_argument("--camera", required=True, type=int, help="camid to cluster")
    parser.add_argument("--out", required=True, type=Path, help="local labels table to write")
    parser.add_argument(
        "--ratio", type=int, default=5, help="images per local cluster on average (paper: 5)"
    )
    parser.add_argument("--distance", choices=("cosine", "jaccard"), default="cosine")
    parser.add_argument(
        "--k", type=int, default=20, help="neighbours per image of the sparse cosine graph"
    )
    parser.add_argument("--k1", type=int, default=15, help="k-reciprocal Jaccard k1")
    parser.add_argument("--k2", type=int, default=4, help="k-reciprocal Jaccard k2")
    parser.add_argument(
        "--sparse-threshold",
        type=int,
        default=5000,
        help="cameras with more images use the sparse formulation",
    )
    parser.add_argument(
        "--knn",
        choices=("exact", "ivf", "hnsw"),
        default="exact",
        help="neighbour search of the sparse formulation",
    )


def run(args: argparse.Namespace) -> None:
    from pipeline.cluster.agglomerative import intra_camera_clusters, n_local_clusters
    from pipeline.cluster.knn import check_normalised
    from pipeline.features.store import read_features
    from pipeline.io import write_table
    from pipeline.stages.cluster_global import warn_few_neighbours
    from pipeline.tables import LOCAL_LABELS

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
    check_normalised(fs.features, source)
    if args.distance == "jaccard":  # k1 counts the image itself
        warn_few_neighbours("--k1", args.k1, args.k1 - 1, len(fs), source)
    elif len(fs) > args.sparse_threshold:
        warn_few_neighbours("--k", args.k, args.k, len(fs), source)
    n_clusters = n_local_clusters(len(fs), args.ratio, args.camera)
    labels = intra_camera_clusters(
        fs.features,
        n_clusters,
        args.distance,
        k=args.k,
        k1=args.k1,
        k2=args.k2,
        sparse_threshold=args.sparse_threshold,
        knn_method=args.knn,
    )
    table = LOCAL_LABELS.frame(index_row=fs.index_row, camid=fs.camid, local_label=labels)
    write_table(table, args.out)
    log.info(
        "camera %d: %d images -> %d local clusters (%s, %s)",
        args.camera,
        len(fs),
        int(labels.max()) + 1,
        args.distance,
        "dense" if len(fs) <= args.sparse_threshold else "sparse",
    )
