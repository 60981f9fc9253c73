"""Compare the readings of Algorithm 1 and the release's refinement on one planted set.

Features come from :func:`pipeline.cluster.synthetic.planted_features` (``--n`` images, ``--dim``
dimensions, ``--cams`` cameras, a camera term as strong as the identity term). All rows share
the same global clusters (Infomap with the pipeline's defaults, k 15, min_sim 0.5, min_size 4)
and the same local labels (agglomerative clustering of each camera into images / 5 clusters,
``--local-distance``), and refine at p = 1:

- ``any``, ``each``, ``best``: paper mode's pivot rules (:mod:`pipeline.cluster.refine`) with the
  paper's Eq. 4 (15 other neighbours, mean distance over all pairs);
- ``reference``: the released code's Eq. 4 and its one pivot per cluster.

For each it prints the pivots that decide, the discarded images (count and ratio of the
clustered ones, as Fig. 6) and the pairwise precision, recall and expansion of the refined
clusters against the planted identities (Fig. 4); the first row is the global clusters before
refinement. The last line is one JSON object with every figure.

    python benchmarks/pivot_rules.py --n 3000 --dim 64 --cams 4
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from pipeline.cluster.agglomerative import local_labels_per_camera
from pipeline.cluster.global_infomap import infomap_clusters
from pipeline.cluster.knn import knn
from pipeline.cluster.quality import cluster_quality, discard_ratio
from pipeline.cluster.refine import PIVOT_RULES, refine_epoch

K = 15


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="images")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--cams", type=int, default=4)
    parser.add_argument(
        "--local-distance", choices=("cosine", "jaccard"), default="jaccard", help="stage 1"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from pipeline.cluster.synthetic import planted_features

    features, camids, pids = planted_features(args.n, args.dim, args.cams, seed=args.seed)
    sims, idx = knn(features, K)
    clusters = infomap_clusters(sims, idx, seed=args.seed)
    local = local_labels_per_camera(features, camids, 5, distance=args.local_distance)
    before = cluster_quality(clusters, pids)
    rows = {
        "global": {
            "pivots": 0,
            "discarded": 0,
            "discard_ratio": 0.0,
            "precision": before.precision,
            "recall": before.recall,
            "expansion": before.expansion,
        }
    }
    readings = [("paper", rule) for rule in PIVOT_RULES] + [("reference", "any")]
    for mode, rule in readings:
        rng = np.random.default_rng(args.seed)
        result = refine_epoch(
            features, clusters, camids, local, 1.0, rng, mode, K, similarities=sims, pivot_rule=rule
        )
        after = cluster_quality(result.labels, pids)
        rows[rule if mode == "paper" else mode] = {
            "pivots": int(result.vouching.sum()),
            "discarded": int(result.discarded.sum()),
            "discard_ratio": discard_ratio(clusters, result.discarded),
            "precision": after.precision,
            "recall": after.recall,
            "expansion": after.expansion,
        }
    print(
        f"{args.n} images, {args.cams} cameras, {args.dim} dimensions: "
        f"{int(clusters.max()) + 1} global clusters, {int((clusters < 0).sum())} outliers; "
        "refinement at p = 1 (pivots: those that decide)"
    )
    print(
        f"{'':>10} {'pivots':>7} {'discarded':>10} {'ratio':>6} {'prec':>6} {'rec':>6} {'exp':>6}"
    )
    for name, row in rows.items():
        print(
            f"{name:>10} {row['pivots']:>7} {row['discarded']:>10} {row['discard_ratio']:>6.3f} "
            f"{row['precision']:>6.3f} {row['recall']:>6.3f} {row['expansion']:>6.2f}"
        )
    print(json.dumps({"n": args.n, "dim": args.dim, "cams": args.cams, **rows}))


if __name__ == "__main__":
    main()
