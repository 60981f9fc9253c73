"""pipeline.cluster.knn: exact and approximate neighbours, self excluded, and the input check."""

import numpy as np
import pytest
import torch

from pipeline.cluster.knn import half_product_bound, knn, torch_search
from pipeline.cluster.synthetic import planted_features


def unit_rows(n, dim, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(x, k):
    sims = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), order


def test_exact_matches_brute_force_without_self():
    x = unit_rows(300, 16)
    sims, idx = knn(x, 7, chunk_size=64)
    ref_sims, ref_idx = brute_force(x, 7)
    assert idx.shape == (300, 7) and sims.dtype == np.float32 and idx.dtype == np.int64
    assert not (idx == np.arange(300)[:, None]).any()
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-6)


def test_missing_neighbours_are_minus_one_and_minus_inf():
    x = unit_rows(4, 8)
    sims, idx = knn(x, 6)
    assert (idx[:, :3] >= 0).all() and (idx[:, 3:] == -1).all()
    assert np.isneginf(sims[:, 3:]).all() and np.isfinite(sims[:, :3]).all()
    assert {tuple(sorted(row[:3])) for row in idx} == {
        tuple(j for j in range(4) if j != i) for i in range(4)
    }


def test_duplicate_rows_still_exclude_self():
    x = unit_rows(5, 8)
    x = np.concatenate([x, x[:1]])  # rows 0 and 5 are identical
    _, idx = knn(x, 3)
    assert idx[0, 0] == 5 and idx[5, 0] == 0
    assert not (idx == np.arange(6)[:, None]).any()


@pytest.mark.parametrize(
    ("method", "dim"), [("ivf", 64), ("ivf", 320), ("hnsw", 64), ("hnsw", 320)]
)
def test_approximate_search_recalls_planted_neighbours_with_exact_similarities(method, dim):
    # at 320 dimensions the index holds a 256-component PCA projection
    x, _, _ = planted_features(2000, dim=dim, n_cams=4, seed=3)
    sims, idx = knn(x, 10, method, seed=0)
    _, ref_idx = brute_force(x, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, ref_idx, strict=True)])
    assert recall > 0.9
    valid = idx >= 0
    exact = np.einsum("nd,nkd->nk", x, x[np.maximum(idx, 0)])
    np.testing.assert_allclose(sims[valid], exact[valid], atol=1e-5)
    assert (np.diff(sims, axis=1) <= 1e-6).all()


@pytest.mark.parametrize("method", ["torch", "auto"])
def test_torch_and_auto_search_equal_faiss_exact_on_the_cpu(method):
    x = unit_rows(300, 16, seed=1)
    ref_sims, ref_idx = knn(x, 7, "exact", device="cpu")
    sims, idx = knn(x, 7, method, chunk_size=64, device="cpu")
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-6)
    assert sims.dtype == np.float32 and idx.dtype == np.int64
    _, few = knn(x[:4], 6, method, device="cpu")  # fewer rows than k: -1 fill as faiss
    np.testing.assert_array_equal(few == -1, np.arange(6)[None, :].repeat(4, 0) >= 3)


def near_duplicates(seed=0):
    """150 spread rows and a tight group of 100 whose similarities differ by ~1e-5, far below
    float16's rounding (~1e-3): half-precision candidates there are in random order."""
    rng = np.random.default_rng(seed)
    centre = unit_rows(1, 16, seed=seed)
    tight = centre + 1e-3 * rng.standard_normal((100, 16)).astype(np.float32)
    x = np.concatenate([unit_rows(150, 16, seed=seed + 1), tight])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def assert_exact_neighbours(x, sims, idx, k):
    """Ties aside: the similarities are the true top k, and each index has its similarity."""
    ref_sims, _ = brute_force(x, k)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-6)
    own = np.einsum("nd,nkd->nk", x.astype(np.float64), x[idx].astype(np.float64))
    np.testing.assert_allclose(sims, own, atol=1e-6)
    assert not (idx == np.arange(len(x))[:, None]).any()


def test_half_precision_candidates_are_certified_or_searched_again():
    x = near_duplicates()
    blocks = list(torch_search(x, 8, device="cpu", rows=32, half=True))
    sims = np.concatenate([b[1] for b in blocks])
    idx = np.concatenate([b[2] for b in blocks])
    assert [b[0] for b in blocks] == list(range(0, 250, 32))
    # self is the first result of every row here (no exact duplicates)
    np.testing.assert_array_equal(idx[:, 0], np.arange(250))
    assert_exact_neighbours(x, sims[:, 1:], idx[:, 1:], 7)


def test_half_product_bound_holds_for_emulated_float16_products():
    x = unit_rows(200, 512, seed=2)
    rounded = torch.as_tensor(x).half().float()
    error = rounded @ rounded.T - torch.as_tensor(x).double() @ torch.as_tensor(x).double().T
    assert 0 < error.abs().max() < half_product_bound(512) / 2  # the bound's safety factor is 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_search_is_exact():
    x = unit_rows(3000, 64, seed=3)
    ref_sims, ref_idx = knn(x, 10, "exact", device="cpu")
    for method in ("torch", "auto"):
        sims, idx = knn(x, 10, method, device="cuda")
        assert (idx == ref_idx).mean() > 0.999  # float32 products round differently on the GPU
        np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    tight = near_duplicates()
    sims, idx = knn(tight, 7, "torch", device="cuda")
    assert_exact_neighbours(tight, sims, idx, 7)
    # tensor-core float16 products stay within the bound the certification relies on
    on_gpu = torch.as_tensor(x, device="cuda").half()
    approx = torch.mm(on_gpu, on_gpu.T, out_dtype=torch.float32).double().cpu()
    exact = torch.as_tensor(x).double() @ torch.as_tensor(x).double().T
    assert (approx - exact).abs().max() < half_product_bound(64)
