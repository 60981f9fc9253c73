"""k-nearest neighbours of L2-normalised features: the one neighbour search of the pipeline.

Every stage that needs neighbours (Infomap's graph, the pivot scores of Eq. 4, the k-reciprocal
Jaccard distance, the sparse intra-camera clustering) calls :func:`knn`, which returns two
``N x k`` arrays, ``similarities`` (cosine, descending along each row) and ``indices``.

Conventions shared by all callers:

- **No self.** Row ``i`` never contains ``i`` itself: the search asks for ``k + 1`` results and
  drops the query (or, when an index with duplicate vectors returned another row first, the last
  result), so ``indices[i]`` are ``k`` *other* rows.
- **Missing neighbours** (fewer than ``k`` other rows exist, or an approximate index found fewer
  candidates) are index ``-1`` and similarity ``-inf``. Consumers treat them as "no link":
  ``-inf`` is below every similarity threshold and ``1 / (1 - (-inf) + m) = 0`` in Eq. 4.

Methods:

- ``exact``: a flat inner-product index (brute force).
- ``ivf`` and ``hnsw``: the features are projected on their first 256 principal components
  (when they have more dimensions: a million 2048-d features then take 1 GB in the index
  instead of 8 GB, and each comparison an eighth of the time) and searched with L2 distance in
  that space (``|x - y|^2 = 2 - 2 cos`` for unit vectors) by an inverted file (``ivf``) or an
  HNSW graph (``hnsw``) for ``2 (k + 1)`` candidates, which are then re-ranked with exact
  float32 similarities in the full dimension. On CPUs ``hnsw`` reaches a given recall at a
  fraction of ``ivf``'s cost (see benchmarks/cluster.py).

With ``ivf`` and ``hnsw`` the returned similarities are therefore always exact; only the
candidate set is approximate. Both are CPU fallbacks for hosts without a GPU: ``exact`` runs on
the GPU when faiss was built with GPU support and a GPU is visible (brute force over a million
images is then a matter of minutes), else on the CPU. On the CPU faiss uses its OpenMP threads,
which follow the process's setting (``OMP_NUM_THREADS``): nothing here changes the thread
count. Queries run ``chunk_size`` rows at a time, so the result buffers, not an N x N matrix,
bound the memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.settings import setting

METHODS = ("exact", "ivf", "hnsw")
PCA_DIM = 256  # ivf searches features projected to this many principal components
RERANK_FACTOR = 2  # approximate methods fetch this many times k + 1 candidates before re-ranking
RERANK_BLOCK_BYTES = 256 * 2**20  # working memory of one block of gathered candidate vectors


@dataclass(frozen=True)
class NeighbourSearch:
    """How the global stage searches neighbours (global clustering and pivot scores)."""

    knn: str = setting(
        "exact",
        "nearest-neighbour search: exact (on the GPU when faiss-gpu sees one), or the CPU "
        "approximations ivf and hnsw for hundreds of thousands of images",
        choices=METHODS,
    )


def knn(
    features: np.ndarray,
    k: int,
    method: str = "exact",
    chunk_size: int = 4096,
    *,
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int = 32,
    ef_search: int = 128,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other rows of every row, by cosine similarity.

    ``features`` must be L2-normalised (:func:`pipeline.features.store.read_features` checks
    that). Returns
    ``(similarities, indices)``, float32 and int64 arrays of shape ``(N, k)``, each row sorted
    by decreasing similarity, self excluded, missing neighbours ``(-inf, -1)`` (module
    docstring). ``nlist`` (default ``4 sqrt(N)``, at most ``N / 39``) and ``nprobe`` (default
    one list in 20, at least 16) tune ``ivf``; ``hnsw_m`` and ``ef_search`` tune ``hnsw``;
    ``seed`` fixes the training sample of the quantisers so that a run is reproducible.
    """
    import faiss

    if method not in METHODS:
        raise ValueError(f"knn method must be one of {METHODS}, got {method!r}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    x = np.ascontiguousarray(features, dtype=np.float32)
    n, dim = x.shape
    wanted = min(k + 1, n)
    fetch = wanted if method == "exact" else min(n, RERANK_FACTOR * wanted)
    index = _build_index(faiss, x, method, nlist, nprobe, hnsw_m, max(ef_search, fetch), seed)
    similarities = np.full((n, k), -np.inf, dtype=np.float32)
    indices = np.full((n, k), -1, dtype=np.int64)
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        sims, idx = index.search(x[start:stop], fetch)
        if method != "exact":
            sims, idx = _rerank(x, start, idx, wanted)
        sims, idx = _drop_self(sims, idx, np.arange(start, stop), k)
        similarities[start:stop, : sims.shape[1]] = sims
        indices[start:stop, : idx.shape[1]] = idx
    return similarities, indices


def _build_index(
    faiss,
    x: np.ndarray,
    method: str,
    nlist: int | None,
    nprobe: int | None,
    hnsw_m: int,
    ef_search: int,
    seed: int,
):
    """A filled faiss index: flat inner product, or PCA + IVF / HNSW with L2 distance."""
    n, dim = x.shape
    if method == "exact":
        index = faiss.IndexFlatIP(dim)
        if faiss.get_num_gpus() > 0:
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(x)
        return index
    reduced = min(dim, PCA_DIM)
    if method == "ivf":
        nlist = nlist or max(1, min(round(4 * math.sqrt(n)), n // 39))
        inner = faiss.IndexIVFFlat(faiss.IndexFlatL2(reduced), reduced, nlist, faiss.METRIC_L2)
        inner.cp.niter = 10
        inner.cp.seed = seed
        inner.nprobe = nprobe or max(16, nlist // 20)
        sample_size = min(n, 40 * nlist)
    else:
        inner = faiss.IndexHNSWFlat(reduced, hnsw_m)
        inner.hnsw.efSearch = ef_search
        sample_size = min(n, 65536)
    index = inner
    if reduced < dim:
        index = faiss.IndexPreTransform(faiss.PCAMatrix(dim, reduced), inner)
    if not index.is_trained:
        sample = np.random.default_rng(seed).choice(n, size=sample_size, replace=False)
        index.train(x[np.sort(sample)])
    index.add(x)
    return index


def _rerank(
    x: np.ndarray, start: int, candidates: np.ndarray, wanted: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact similarities of the candidate rows, sorted, keeping the best ``wanted``."""
    n_rows, n_cand = candidates.shape
    block = max(1, RERANK_BLOCK_BYTES // (n_cand * x.shape[1] * 4))
    sims = np.empty((n_rows, n_cand), dtype=np.float32)
    for lo in range(0, n_rows, block):
        hi = min(n_rows, lo + block)
        cand = candidates[lo:hi]
        gathered = x[np.maximum(cand, 0)]
        sims[lo:hi] = np.einsum("rd,rcd->rc", x[start + lo : start + hi], gathered)
    sims[candidates < 0] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, :wanted]
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(candidates, order, axis=1)


def _drop_self(
    sims: np.ndarray, idx: np.ndarray, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query from its own result row (else its last result); keep ``k`` columns."""
    idx = idx.astype(np.int64, copy=False)
    is_self = idx == rows[:, None]
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True
    order = np.argsort(is_self, axis=1, kind="stable")[:, : min(k, idx.shape[1] - 1)]
    sims = np.take_along_axis(sims, order, axis=1)
    idx = np.take_along_axis(idx, order, axis=1)
    sims[idx < 0] = -np.inf
    return sims, idx
