"""Synthetic re-identification features with planted identities and a camera bias.

For tests and benchmarks of the clustering code, where real features are too big to ship:

    x = normalise(B (u_pid + s_cam v_cam + s_noise e) + s_ambient f)

``u_pid`` (one per identity) and ``v_cam`` (one per camera) are random unit vectors of a
``latent_dim``-dimensional space (at most ``dim``), ``e`` per-image Gaussian noise of expected
norm 1, ``B`` a random orthonormal embedding into ``dim`` dimensions, and ``f`` Gaussian noise
of expected norm 1 in all ``dim`` dimensions (so the features are not confined to a subspace,
which would flatter approximate search). A camera term as strong as the identity term
reproduces the paper's Fig. 1: images of different people seen by the same camera can be
closer than images of one person seen by two cameras.

Each identity is seen by a random set of 2 to ``n_cams`` cameras (at most ``n_cams``) and gets
``images_per_identity`` images on average, spread uniformly over its cameras. Camera ids run
from 1 as in Market-1501; identities from 0. Rows are in random order.
"""

from __future__ import annotations

import numpy as np


def planted_features(
    n_images: int,
    dim: int = 2048,
    n_cams: int = 6,
    *,
    images_per_identity: int = 16,
    latent_dim: int = 64,
    camera_strength: float = 1.0,
    noise: float = 0.5,
    ambient_noise: float = 0.1,
    seed: int = 0,
    chunk_size: int = 65536,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(features, camids, pids)``: float32 ``(n_images, dim)`` unit rows, int64 ids."""
    rng = np.random.default_rng(seed)
    latent_dim = min(latent_dim, dim)
    n_ids = max(1, n_images // images_per_identity)
    pids = rng.permutation(np.arange(n_images) % n_ids)
    n_seen = rng.integers(min(2, n_cams), n_cams + 1, size=n_ids)
    camera_sets = np.argsort(rng.random((n_ids, n_cams)), axis=1)
    slot = (rng.random(n_images) * n_seen[pids]).astype(np.int64)
    camids = camera_sets[pids, slot] + 1
    identity = _unit(rng.standard_normal((n_ids, latent_dim)))
    camera = _unit(rng.standard_normal((n_cams, latent_dim)))
    basis = np.linalg.qr(rng.standard_normal((dim, latent_dim)))[0].astype(np.float32)
    features = np.empty((n_images, dim), dtype=np.float32)
    for start in range(0, n_images, chunk_size):
        rows = slice(start, min(n_images, start + chunk_size))
        size = rows.stop - rows.start
        latent = (
            identity[pids[rows]]
            + camera_strength * camera[camids[rows] - 1]
            + noise / np.sqrt(latent_dim) * rng.standard_normal((size, latent_dim))
        ).astype(np.float32)
        block = latent @ basis.T
        block += ambient_noise / np.sqrt(dim) * rng.standard_normal((size, dim), dtype=np.float32)
        features[rows] = _unit(block)
    return features, camids.astype(np.int64), pids.astype(np.int64)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)
