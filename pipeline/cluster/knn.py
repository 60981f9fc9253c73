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

- ``exact``: a flat inner-product index of faiss (brute force), on the GPU when faiss was built
  with GPU support and sees one (and ``device`` is not ``cpu``), else on the CPU.
- ``torch``: the same exact search in PyTorch on ``device`` (default: a CUDA GPU when one is
  visible, else the CPU), for hosts whose faiss has no GPU support (the faiss-cpu wheels).
  Queries run in blocks, each multiplied against all rows and reduced by ``topk``. On a GPU
  the products are float16 inputs accumulated in float32 (tensor cores, several times the
  float32 rate): that fetches ``k + 1 + RERANK_MARGIN`` candidates, re-ranked with float32
  similarities, and a row is accepted only when its last kept similarity is at least the last
  fetched candidate's float16 similarity plus the rounding bound of float16 inputs (see
  :func:`half_product_bound`), so that no row outside the candidates can beat it; the rest
  are searched again in float32. The result is exact either way (ties aside). On the
  CPU the products are float32 throughout.
- ``auto``: ``exact`` when faiss sees a GPU or no GPU is used, else ``torch`` on the GPU.
- ``ivf`` and ``hnsw``: the features are projected on their first 256 principal components
  (when they have more dimensions: a million 2048-d features then take 1 GB in the index
  instead of 8 GB, and each comparison an eighth of the time) and searched with L2 distance in
  that space (``|x - y|^2 = 2 - 2 cos`` for unit vectors) by an inverted file (``ivf``) or an
  HNSW graph (``hnsw``) for ``2 (k + 1)`` candidates, which are then re-ranked with exact
  float32 similarities in the full dimension. On CPUs ``hnsw`` reaches a given recall at a
  fraction of ``ivf``'s cost (see benchmarks/cluster.py).

With ``ivf`` and ``hnsw`` the returned similarities are therefore always exact; only the
candidate set is approximate. Both are CPU fallbacks for hosts without a GPU: on a GPU,
``exact`` or ``torch`` search exhaustively (benchmarks/cluster.py --knn torch --device cuda
times a million 2048-d images; the README has the figure). On the CPU faiss uses its OpenMP
threads, which follow the process's setting (``OMP_NUM_THREADS``): nothing here changes the
thread count. Queries run ``chunk_size`` rows at a time (fewer on a GPU whose free memory
needs it), so the result buffers, not an N x N matrix, bound the memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.settings import setting

METHODS = ("auto", "exact", "torch", "ivf", "hnsw")
PCA_DIM = 256  # ivf searches features projected to this many principal components
RERANK_FACTOR = 2  # approximate methods fetch this many times k + 1 candidates before re-ranking
RERANK_BLOCK_BYTES = 256 * 2**20  # working memory of one block of gathered candidate vectors
RERANK_MARGIN = 32  # torch's float16 products fetch k + 1 + this many candidates
TORCH_CPU_BLOCK_BYTES = 256 * 2**20  # torch on the CPU: working memory of one block of queries
GPU_MEMORY_SHARE = 0.25  # torch on a GPU: a block of queries takes at most this of the free memory
BYTES_PER_PRODUCT = 12  # the float32 product of a query and a row, and topk's work space


@dataclass(frozen=True)
class NeighbourSearch:
    """How the global stage searches neighbours (global clustering and pivot scores)."""

    knn: str = setting(
        "auto",
        "nearest-neighbour search: exact (faiss, on its GPUs when faiss-gpu sees one), torch "
        "(exact, in PyTorch on the job's CUDA device, for a faiss without GPU support), auto "
        "(exact, or torch when the job runs on a GPU that faiss cannot use), or the CPU "
        "approximations ivf and hnsw for hundreds of thousands of images",
        choices=METHODS,
    )


def knn(
    features: np.ndarray,
    k: int,
    method: str = "exact",
    chunk_size: int = 4096,
    *,
    device: str | None = None,
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
    docstring). ``device`` (``cpu``, ``cuda``, ``cuda:1``; None: a GPU when one is visible)
    says where ``torch`` and ``auto`` search and whether ``exact`` may use faiss's GPUs.
    ``nlist`` (default ``4 sqrt(N)``, at most ``N / 39``) and ``nprobe`` (default one list in
    20, at least 16) tune ``ivf``; ``hnsw_m`` and ``ef_search`` tune ``hnsw``; ``seed`` fixes
    the training sample of the quantisers so that a run is reproducible.
    """
    if method not in METHODS:
        raise ValueError(f"knn method must be one of {METHODS}, got {method!r}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    x = np.ascontiguousarray(features, dtype=np.float32)
    n = len(x)
    wanted = min(k + 1, n)
    if method == "auto":
        method = _auto_method(device)
    if method == "torch":
        blocks = torch_search(x, wanted, device=device, rows=chunk_size)
    else:
        blocks = _faiss_search(
            x, wanted, method, chunk_size, device != "cpu", nlist, nprobe, hnsw_m, ef_search, seed
        )
    similarities = np.full((n, k), -np.inf, dtype=np.float32)
    indices = np.full((n, k), -1, dtype=np.int64)
    for start, sims, idx in blocks:
        stop = start + len(sims)
        sims, idx = _drop_self(sims, idx, np.arange(start, stop), k)
        similarities[start:stop, : sims.shape[1]] = sims
        indices[start:stop, : idx.shape[1]] = idx
    return similarities, indices


def _auto_method(device: str | None) -> str:
    """``exact`` unless a GPU is to be used that faiss cannot use, then ``torch``."""
    import faiss

    if device == "cpu" or faiss.get_num_gpus() > 0:
        return "exact"
    import torch

    return (
        "torch"
        if torch.device(device or "cuda").type == "cuda" and torch.cuda.is_available()
        else "exact"
    )


def _faiss_search(
    x: np.ndarray,
    wanted: int,
    method: str,
    chunk_size: int,
    use_gpu: bool,
    nlist: int | None,
    nprobe: int | None,
    hnsw_m: int,
    ef_search: int,
    seed: int,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(start, similarities, indices)`` of ``wanted`` results per row (self included) for
    consecutive blocks of ``chunk_size`` rows, from a faiss index; approximate candidates
    re-ranked exactly."""
    import faiss

    n = len(x)
    fetch = wanted if method == "exact" else min(n, RERANK_FACTOR * wanted)
    index = _build_index(
        faiss, x, method, nlist, nprobe, hnsw_m, max(ef_search, fetch), seed, use_gpu
    )
    for start in range(0, n, chunk_size):
        sims, idx = index.search(x[start : start + chunk_size], fetch)
        if method != "exact":
            sims, idx = _rerank(x, start, idx, wanted)
        yield start, sims, idx


def half_product_bound(dim: int) -> float:
    """``c`` with ``|x~ . y~ - x . y| <= c |x| |y| + 2^-24 sqrt(dim) (|x| + |y|)`` for ``x~``,
    ``y~`` rounded to float16 and the product accumulated in float32, doubled for safety.

    Rounding each input component moves each product ``x_i y_i`` by at most ``(2u + u^2)`` of
    itself (``u = 2^-11``), ``(2u + u^2) |x| |y|`` in all (Cauchy-Schwarz); the float32 sum of
    ``dim`` exact float16 products adds at most ``gamma_dim (1 + u)^2 |x| |y|``,
    ``gamma_dim = dim v / (1 - dim v)``, ``v = 2^-24``. The second term covers components below
    float16's normal range (absolute error at most ``2^-25`` each). The factor 2 leaves room
    for accumulators that truncate instead of rounding.
    """
    u, v = 2.0**-11, 2.0**-24
    gamma = dim * v / (1 - dim * v)
    return 2 * (2 * u + u * u + gamma * (1 + u) ** 2)


def torch_search(
    x: np.ndarray,
    wanted: int,
    *,
    device: str | None = None,
    rows: int = 4096,
    half: bool | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Exact search in PyTorch: ``(start, similarities, indices)`` of the ``wanted`` largest
    inner products of each row with all rows (itself included), for blocks of query rows.

    ``device``: as in :func:`knn`. ``half`` (default: on a GPU, with PyTorch 2.8 or later,
    whose ``torch.mm`` returns float32 from float16 inputs) fetches candidates with float16
    products and certifies them (module docstring); on the CPU those products are emulated
    (float16-rounded inputs, float32 products), which tests the same logic. Float32 products
    on a GPU are float32 only while TF32 is off (PyTorch's default). Blocks hold at most
    ``rows`` queries, fewer when a block's products would take more than ``GPU_MEMORY_SHARE``
    of the GPU's free memory (``TORCH_CPU_BLOCK_BYTES`` on the CPU).
    """
    import torch

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if half is None:
        version = tuple(int(part) for part in torch.__version__.split(".")[:2])
        half = device.type == "cuda" and version >= (2, 8)
    base = torch.as_tensor(x, device=device)
    n, dim = base.shape
    fetch = min(n, wanted + RERANK_MARGIN) if half else wanted
    if device.type == "cuda":
        budget = GPU_MEMORY_SHARE * torch.cuda.mem_get_info(device)[0]
    else:
        budget = TORCH_CPU_BLOCK_BYTES
    per_row = n * BYTES_PER_PRODUCT + (fetch * dim * 4 if half else 0)
    rows = int(max(1, min(rows, budget // per_row)))
    if half:
        rounded = base.half() if device.type == "cuda" else base.half().float()
        norms = torch.linalg.vector_norm(base, dim=1)
        slack = half_product_bound(dim) * norms * norms.max() + 2.0**-24 * math.sqrt(dim) * (
            norms + norms.max()
        )
    for start in range(0, n, rows):
        query = base[start : start + rows]
        if not half:
            sims, idx = torch.topk(query @ base.T, wanted, dim=1)
            yield start, sims.cpu().numpy(), idx.cpu().numpy()
            continue
        approx = _half_products(rounded[start : start + rows], rounded)
        approx_sims, candidates = torch.topk(approx, fetch, dim=1)
        del approx
        exact = torch.einsum("qd,qcd->qc", query, base[candidates])
        sims, order = torch.topk(exact, wanted, dim=1)
        idx = torch.gather(candidates, 1, order)
        if fetch < n:
            # a row outside the candidates has a float32 similarity of at most the last
            # candidate's float16 one plus the slack: redo the rows where that could win
            doubtful = torch.nonzero(sims[:, -1] < approx_sims[:, -1] + slack[start : start + rows])
            redo = doubtful.flatten()
            if len(redo):
                sims[redo], idx[redo] = torch.topk(query[redo] @ base.T, wanted, dim=1)
        yield start, sims.cpu().numpy(), idx.cpu().numpy()


def _half_products(query, rows):
    """``query @ rows.T`` in float32 from float16 inputs: tensor cores on a GPU; on the CPU the
    inputs are float16-rounded float32 tensors already."""
    import torch

    if query.dtype == torch.float16:
        return torch.mm(query, rows.T, out_dtype=torch.float32)
    return query @ rows.T


def _build_index(
    faiss,
    x: np.ndarray,
    method: str,
    nlist: int | None,
    nprobe: int | None,
    hnsw_m: int,
    ef_search: int,
    seed: int,
    use_gpu: bool,
):
    """A filled faiss index: flat inner product (on faiss's GPUs if ``use_gpu`` and it sees
    any), or PCA + IVF / HNSW with L2 distance."""
    n, dim = x.shape
    if method == "exact":
        index = faiss.IndexFlatIP(dim)
        if use_gpu and faiss.get_num_gpus() > 0:
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
