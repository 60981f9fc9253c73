"""Time and peak memory of `pipeline evaluate`'s metric computation on synthetic features.

Features are L2-normalised float32 vectors scattered around one random centre per identity,
generated a block of rows at a time straight into their final arrays (so generation does not
double the peak). Every query identity has gallery images in random cameras, so nearly every
query has a valid match. Prints the figures; the last line is one JSON object.

MSMT17's test split: python benchmarks/evaluate.py --queries 11659 --gallery 82161 --dim 2048
(add ``--device cuda`` for the products and ranking on a GPU). Besides wall time the figures
hold the process's CPU time (all threads), the steadier figure on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from pipeline.evaluate.metrics import evaluate_retrieval, rows_per_block
from pipeline.evaluate.rerank import k_reciprocal_distance_blocks

GENERATION_ROWS = 4096


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, required=True)
    parser.add_argument("--gallery", type=int, required=True)
    parser.add_argument("--dim", type=int, required=True)
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="query rows per block (default: from budget)"
    )
    parser.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking first")
    parser.add_argument("--k1", type=int, default=20)
    parser.add_argument("--k2", type=int, default=6)
    parser.add_argument("--lambda-value", type=float, default=0.3)
    parser.add_argument(
        "--queries-per-identity", type=int, default=4, help="sets the number of identities"
    )
    parser.add_argument("--cameras", type=int, default=15)
    parser.add_argument(
        "--noise", type=float, default=4.0, help="norm of the noise added to identity centres"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device", default="cpu", help="cpu (NumPy) | cuda | cuda:<n> (PyTorch on that GPU)"
    )
    return parser.parse_args()


def synthetic_features(
    rng: np.random.Generator, centres: np.ndarray, pids: np.ndarray, noise: float
) -> np.ndarray:
    """Unit rows ``normalise(centre[pid] + noise * random direction)``, filled block by block."""
    dim = centres.shape[1]
    out = np.empty((len(pids), dim), dtype=np.float32)
    for start in range(0, len(pids), GENERATION_ROWS):
        block = out[start : start + GENERATION_ROWS]
        rng.standard_normal(out=block, dtype=np.float32)
        block *= noise / np.sqrt(dim)
        block += centres[pids[start : start + GENERATION_ROWS]]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return out


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    args = parse_args()
    rng = np.random.default_rng(args.seed)
    identities = max(1, args.queries // args.queries_per_identity)
    query_pids = np.arange(args.queries) % identities
    gallery_pids = rng.permutation(np.arange(args.gallery) % identities)
    query_camids = rng.integers(0, args.cameras, args.queries)
    gallery_camids = rng.integers(0, args.cameras, args.gallery)

    start = time.perf_counter()
    centres = rng.standard_normal((identities, args.dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    query = synthetic_features(rng, centres, query_pids, args.noise)
    gallery = synthetic_features(rng, centres, gallery_pids, args.noise)
    del centres
    generation_seconds = time.perf_counter() - start
    features_mb = (query.nbytes + gallery.nbytes) / 2**20
    rss_after_generation = peak_rss_mb()
    chunk = args.chunk_size or rows_per_block(
        args.queries + args.gallery if args.rerank else args.gallery
    )
    print(
        f"{args.queries} queries x {args.gallery} gallery, dim {args.dim}, "
        f"{identities} identities, {args.cameras} cameras; features {features_mb:.0f} MB "
        f"generated in {generation_seconds:.1f} s (peak RSS so far {rss_after_generation:.0f} MB); "
        f"{chunk} query rows per block; re-ranking {'on' if args.rerank else 'off'}",
        flush=True,
    )

    start, cpu_start = time.perf_counter(), time.process_time()
    distance = None
    if args.rerank:
        distance = k_reciprocal_distance_blocks(
            query,
            gallery,
            k1=args.k1,
            k2=args.k2,
            lambda_value=args.lambda_value,
            chunk_size=args.chunk_size,
        )
    metrics = evaluate_retrieval(
        query,
        query_pids,
        query_camids,
        gallery,
        gallery_pids,
        gallery_camids,
        chunk_size=args.chunk_size,
        distance=distance,
        device=None if args.device == "cpu" else args.device,
    )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    result = {
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "device": args.device,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "queries": args.queries,
        "gallery": args.gallery,
        "dim": args.dim,
        "mAP": round(metrics.mAP, 4),
        "rank1": round(metrics.rank(1), 4),
        "mINP": round(metrics.mINP, 4),
        "num_valid_query": metrics.num_valid_query,
        "rerank": args.rerank,
        "chunk_size": chunk,
        "features_mb": round(features_mb, 1),
        "generation_seconds": round(generation_seconds, 2),
    }
    print(
        f"evaluated in {seconds:.1f} s ({cpu_seconds:.1f} s CPU), peak RSS "
        f"{result['peak_rss_mb']:.0f} MB; mAP {metrics.mAP:.4f}, rank-1 {metrics.rank(1):.4f}, "
        f"mINP {metrics.mINP:.4f}, "
        f"{metrics.num_valid_query}/{metrics.num_query} valid queries"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
