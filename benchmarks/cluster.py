"""Benchmark the clustering and refinement steps on synthetic features at Market-to-1M scale.

Features come from :func:`pipeline.cluster.synthetic.planted_features`: L2-normalised, ``--dim``
dimensions, ``--cams`` cameras, about 16 images per planted identity and a camera term as strong
as the identity term. Each step reports wall time, CPU time of the process (all threads; on a
shared machine the steadier figure) and peak resident memory (sampled every 20 ms).

Global mode (default), the work of ``pipeline cluster-global`` and ``pipeline refine``:

- ``knn``: k = 15 neighbours with ``--knn`` on ``--device`` (``torch`` and ``auto`` search on a
  GPU there); for ``ivf``/``hnsw`` also recall@15 against exact search on ``--recall-queries``
  random queries; ``--knn-only`` stops here (the GPU figure of a million images);
- ``infomap``: graph (min_sim 0.5) and Infomap (min_size 4; ``--tune-iterations`` as in
  ``pipeline cluster-global``);
- ``pivots``: the exact mean distance and Eq. 4 on the same kNN lists;
- ``refine``: Eq. 5 with p = 1 (local labels are the planted identities, i.e. a perfect
  intra-camera clustering: the cost of refining does not depend on their quality);
- ``weights``: Eq. 6 per sample;
- ``quality``: Fig. 4 diagnostics of the global and refined labels (not part of the stage).

``--intra-only``: intra-camera agglomerative clustering of one camera of ``--camera-n`` images
into images // 5 local clusters (``pipeline cluster-intra``, sparse formulation).

Every figure is printed as it is measured; the last line is one JSON object with all of them:
``n``, ``knn_seconds`` (the search alone: ``setup`` imports faiss and PyTorch and starts CUDA
first), ``after_knn_seconds`` (graph + Infomap + pivots + refinement + weights),
``pivots_refine_seconds``, ``peak_rss_mb``, ``knn_recall`` (approximate search only) and the
per-step seconds, CPU seconds and peaks. The 1M run needs about 12 GB of memory.

    python benchmarks/cluster.py --n 32621
    python benchmarks/cluster.py --n 1000000 --knn hnsw
    python benchmarks/cluster.py --n 1000000 --knn torch --device cuda --knn-only
    python benchmarks/cluster.py --intra-only --camera-n 200000 --knn hnsw
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator

import numpy as np

from pipeline.cluster.agglomerative import intra_camera_clusters, n_local_clusters
from pipeline.cluster.global_infomap import infomap_clusters
from pipeline.cluster.knn import knn
from pipeline.cluster.pivots import mean_pairwise_distance, pivot_scores, select_pivots
from pipeline.cluster.quality import cluster_quality
from pipeline.cluster.refine import refine_labels
from pipeline.cluster.synthetic import planted_features
from pipeline.cluster.weights import sample_weights

K = 15


class Steps:
    """Wall time and peak RSS of named steps; RSS sampled from /proc by a background thread."""

    def __init__(self) -> None:
        self.figures: dict[str, float] = {}
        self._peak = 0
        self._overall = 0
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            rss = _rss_bytes()
            self._peak = max(self._peak, rss)
            self._overall = max(self._overall, rss)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        self._peak = _rss_bytes()
        start, cpu_start = time.perf_counter(), time.process_time()
        yield
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        peak_mb = max(self._peak, _rss_bytes()) / 2**20
        self.figures[f"{name}_seconds"] = round(seconds, 3)
        self.figures[f"{name}_cpu_seconds"] = round(cpu, 3)
        self.figures[f"{name}_peak_rss_mb"] = round(peak_mb)
        print(
            f"{name:>10}: {seconds:9.2f} s   ({cpu:9.2f} s CPU, all threads)   "
            f"peak RSS {peak_mb:8.0f} MB",
            flush=True,
        )

    def peak_mb(self) -> int:
        return round(max(self._overall, _rss_bytes()) / 2**20)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def exact_recall(features: np.ndarray, indices: np.ndarray, queries: int, seed: int) -> float:
    """Recall@k of ``indices`` against brute-force search, on ``queries`` random rows."""
    n, k = indices.shape
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(queries, n), replace=False))
    best_sims = np.full((len(rows), k), -np.inf, dtype=np.float32)
    best_idx = np.full((len(rows), k), -1, dtype=np.int64)
    for start in range(0, n, 65536):
        block = features[start : start + 65536]
        sims = features[rows] @ block.T
        sims[rows[:, None] == np.arange(start, start + len(block))[None, :]] = -np.inf
        sims = np.concatenate([best_sims, sims], axis=1)
        idx = np.concatenate(
            [best_idx, np.broadcast_to(np.arange(start, start + len(block)), sims[:, k:].shape)],
            axis=1,
        )
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        best_sims = np.take_along_axis(sims, top, axis=1)
        best_idx = np.take_along_axis(idx, top, axis=1)
    found = [len(set(a) & set(b)) for a, b in zip(indices[rows], best_idx, strict=True)]
    return float(np.sum(found) / best_idx.size)


def warm_up(device: str | None) -> None:
    """Import faiss and PyTorch and start CUDA, so that the ``knn`` step times the search."""
    import faiss  # noqa: F401
    import torch

    if torch.cuda.is_available() and (device or "cuda").startswith("cuda"):
        torch.zeros(1, device=device or "cuda")


def global_benchmark(args: argparse.Namespace, steps: Steps) -> dict:
    with steps.step("setup"):
        warm_up(args.device)
    with steps.step("generate"):
        features, camids, pids = planted_features(args.n, args.dim, args.cams, seed=args.seed)
    with steps.step("knn"):
        sims, idx = knn(features, K, args.knn, device=args.device, seed=args.seed)
    figures: dict = {}
    if args.knn in ("ivf", "hnsw"):
        with steps.step("recall"):
            figures["knn_recall"] = exact_recall(features, idx, args.recall_queries, args.seed)
        print(f"    recall@{K}: {figures['knn_recall']:.4f} ({args.recall_queries} queries)")
    if args.knn_only:
        return {"n": args.n, **figures}
    with steps.step("infomap"):
        clusters = infomap_clusters(
            sims, idx, min_sim=0.5, min_size=4, seed=args.seed, tune_iterations=args.tune_iterations
        )
    with steps.step("pivots"):
        pivots = select_pivots(pivot_scores(sims, mean_pairwise_distance(features)), clusters)
    with steps.step("refine"):
        labels, discarded = refine_labels(
            clusters, camids, pids, pivots, 1.0, np.random.default_rng(args.seed)
        )
    with steps.step("weights"):
        sample_weights(labels, camids)
    with steps.step("quality"):
        before, after = cluster_quality(clusters, pids), cluster_quality(labels, pids)
    f = steps.figures
    figures.update(
        after_knn_seconds=round(
            f["infomap_seconds"] + f["pivots_seconds"] + f["refine_seconds"] + f["weights_seconds"],
            3,
        ),
        pivots_refine_seconds=round(f["pivots_seconds"] + f["refine_seconds"], 3),
        n_clusters=int(clusters.max()) + 1,
        n_outliers=int((clusters < 0).sum()),
        n_pivots=int(pivots.sum()),
        n_discarded=int(discarded.sum()),
        precision_global=round(before.precision, 4),
        precision_refined=round(after.precision, 4),
        expansion_global=round(before.expansion, 3),
        expansion_refined=round(after.expansion, 3),
    )
    print(
        f"    {figures['n_clusters']} clusters, {figures['n_outliers']} outliers, "
        f"{figures['n_pivots']} pivots, {figures['n_discarded']} discarded; precision "
        f"{before.precision:.3f} -> {after.precision:.3f}, expansion {before.expansion:.2f} -> "
        f"{after.expansion:.2f}"
    )
    print(
        f"after kNN: {figures['after_knn_seconds']:.2f} s (graph + Infomap + pivots + refine + "
        f"weights); pivots + refine: {figures['pivots_refine_seconds']:.2f} s"
    )
    return {"n": args.n, **figures}


def intra_benchmark(args: argparse.Namespace, steps: Steps) -> dict:
    with steps.step("generate"):
        features, _, _ = planted_features(args.camera_n, args.dim, 1, seed=args.seed)
    n_clusters = n_local_clusters(len(features), 5, camera=1)
    with steps.step("intra"):
        labels = intra_camera_clusters(
            features, n_clusters, args.distance, sparse_threshold=0, knn_method=args.knn
        )
    return {
        "n": args.camera_n,
        "distance": args.distance,
        "n_local_clusters": int(labels.max()) + 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32621, help="images (global mode)")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--cams", type=int, default=6)
    parser.add_argument("--knn", choices=("auto", "exact", "torch", "ivf", "hnsw"), default="exact")
    parser.add_argument(
        "--device", default=None, help="cpu | cuda | cuda:<n> (default: a GPU when one is visible)"
    )
    parser.add_argument("--knn-only", action="store_true", help="stop after the neighbour search")
    parser.add_argument("--intra-only", action="store_true", help="one camera, stage 1 only")
    parser.add_argument("--camera-n", type=int, default=200000, help="images of that camera")
    parser.add_argument("--distance", choices=("cosine", "jaccard"), default="cosine")
    parser.add_argument("--recall-queries", type=int, default=1000)
    parser.add_argument(
        "--tune-iterations", type=int, default=1, help="Infomap tuning limit (0: no limit)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    steps = Steps()
    print(
        f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"cpus={os.cpu_count()}",
        flush=True,
    )
    figures = intra_benchmark(args, steps) if args.intra_only else global_benchmark(args, steps)
    figures = {
        **figures,
        "dim": args.dim,
        "cams": 1 if args.intra_only else args.cams,
        "knn": args.knn,
        "device": args.device or "default",
        "tune_iterations": args.tune_iterations,
        "knn_seconds": steps.figures.get("knn_seconds"),
        "peak_rss_mb": steps.peak_mb(),
        **steps.figures,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
