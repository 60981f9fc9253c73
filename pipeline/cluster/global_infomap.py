"""Global clustering with Infomap on the kNN graph (paper Sec. III-A/C, as the released code).

Each image links to its ``k`` nearest other images (:func:`pipeline.cluster.knn.knn`) whose
cosine similarity is at least ``min_sim``, with directed links weighted by that similarity;
Infomap (two-level, directed flow) partitions the graph. Then:

- an image without any outgoing link (no neighbour reaches ``min_sim``) is an outlier (-1), as
  the released code's "single" nodes, even if others link to it;
- a module with fewer than ``min_size`` images is dissolved into outliers.

The labels are renumbered 0..K-1 (in Infomap's module order).

The paper gives neither Infomap's ``k`` nor its other settings. The released code
(``calr/utils/infomap_cluster.py``: ``get_dist_nbr``, ``get_links``, ``cluster_by_infomap``;
called from ``inter_camera_training.py`` with ``--k1 15 --eps 0.5 --k2 4``) differs from the
defaults here in five ways, each a parameter (the release's value in brackets):

- ``k``: its faiss search asks for 15 results *including the image itself*, so each image links
  to at most 14 others [``k_counts_self``: the lists of ``knn(features, 14)``; the default
  searches 15 others];
- ``min_size``: it drops modules of *at most* ``k2 = 4`` images [``min_size=5``; default 4];
- ``tune_iterations``: Infomap's default, no limit on the tuning rounds [0; default 1];
- ``infomap_seed``: Infomap's own default seed [123; default ``seed + 1``];
- ``isolated_nodes``: it builds the network from the links alone, so an image that neither links
  nor is linked to is not in it [False; default True, every image is a node]. Either way such
  an image is an outlier, but as a node it draws teleportation flow, which changes the
  partition of the others (adjusted Rand index 0.36-0.73 between the two on planted sets with
  203-214 such images in 3,000, the other four settings aligned).

Each is a setting of :class:`InfomapOptions` (``config/reference.yaml`` sets all five). With
the five aligned the partitions agree exactly (adjusted Rand index 1 on planted sets,
Infomap 2.16; the release pinned Infomap 2.6.0, whose search may differ). ``min_sim`` is 0.5 in
both.

The modules are read back from a clu file that Infomap writes into a temporary folder, not
through ``Result.modules()``: faiss and infomap are both SWIG modules sharing SWIG's runtime
type table, and once faiss is imported *after* infomap, infomap's Python-side result readers
iterate through faiss's iterator wrappers and crash the interpreter (segmentation fault). The
file is written by Infomap's C++ code and is immune to import order. Infomap is seeded and
single-threaded here, so the same graph and seed give the same labels. Infomap only accepts
seeds >= 1, the pipeline's seeds start at 0: unless ``infomap_seed`` is given, Infomap gets
``--seed {seed + 1}``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.cluster.labels import drop_small_clusters
from pipeline.settings import setting


@dataclass(frozen=True)
class InfomapOptions:
    """Infomap on the kNN graph, the paper's global clustering."""

    k: int = setting(
        15,
        "neighbours per image in the graph, about the images of one identity (the paper does "
        "not give it; the released code: 15, counting the image itself)",
        minimum=1,
    )
    k_counts_self: bool = setting(
        False,
        "k counts the image itself, so that each image links to at most k - 1 others, as the "
        "released code's search (k 15 = 14 others)",
    )
    min_sim: float = setting(0.5, "weakest similarity of a link", minimum=-1, maximum=1)
    min_size: int = setting(
        4, "smallest cluster kept; smaller ones become outliers (the released code: 5)", minimum=1
    )
    tune_iterations: int = setting(
        1,
        "limit on Infomap's fine/coarse tuning rounds; 0 = no limit (Infomap's default, the "
        "released code); 1 is about 3x faster at a lower codelength on the benchmark graphs",
        minimum=0,
    )
    infomap_seed: int | None = setting(
        None,
        "Infomap's own --seed (1 or more); null = the run's seed + 1. The released code leaves "
        "Infomap's default, 123",
        minimum=1,
    )
    isolated_nodes: bool = setting(
        True,
        "every image is a node of Infomap's network; off: only images with a link, as the "
        "released code (an unlinked image is an outlier either way, but as a node it draws "
        "teleportation flow, which changes the partition of the others)",
    )

    @property
    def neighbours(self) -> int:
        """Other images searched per image: ``k``, or ``k - 1`` when it counts the image."""
        return self.k - 1 if self.k_counts_self else self.k


def infomap_clusters(
    similarities: np.ndarray,
    indices: np.ndarray,
    min_sim: float = 0.5,
    min_size: int = 4,
    seed: int = 0,
    tune_iterations: int = 1,
    *,
    infomap_seed: int | None = None,
    isolated_nodes: bool = True,
) -> np.ndarray:
    """Global cluster labels (-1 = outlier) from kNN lists (rows without self).

    ``tune_iterations`` > 0 limits Infomap's fine/coarse tuning rounds
    (``--tune-iteration-limit``); 0 keeps Infomap's default (no limit), as the released code.
    The default 1 is both faster and no worse by Infomap's own objective on the 32,621-image
    benchmark graph (k 15, min_sim 0.5; seeds 1-3): 1.2-1.3 s instead of 2.9-3.8 s of CPU, and a
    codelength of 9.565-9.573 bits instead of 9.607-9.612 (lower is better).
    ``infomap_seed`` (>= 1) is passed to Infomap as it is; None passes ``seed + 1``.
    ``isolated_nodes=False`` leaves images without any link out of Infomap's network, as the
    released code (module docstring).
    """
    import infomap

    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if infomap_seed is not None and infomap_seed < 1:
        raise ValueError(f"infomap_seed must be >= 1 (Infomap's own range), got {infomap_seed}")
    n, k = indices.shape
    rows = np.repeat(np.arange(n), k)
    cols = indices.ravel()
    sims = similarities.ravel().astype(np.float64)
    link = (cols >= 0) & (sims >= min_sim)
    labels = np.full(n, -1, dtype=np.int64)
    if not link.any():
        return labels
    seed_flag = int(seed) + 1 if infomap_seed is None else int(infomap_seed)
    flags = f"--two-level --directed --silent --seed {seed_flag}"
    if tune_iterations > 0:
        flags += f" --tune-iteration-limit {int(tune_iterations)}"
    im = infomap.Infomap(flags)
    if isolated_nodes:
        im.add_nodes(range(n))
    im.add_links(np.stack([rows[link], cols[link], sims[link]], axis=1))
    result = im.run()
    with tempfile.TemporaryDirectory(prefix="infomap-") as tmp:
        clu = Path(tmp) / "modules.clu"
        result.write_clu(clu)
        table = pd.read_csv(clu, sep=" ", comment="#", header=None, usecols=[0, 1])
    labels[table[0].to_numpy()] = table[1].to_numpy()
    has_link = np.bincount(rows[link], minlength=n) > 0
    return drop_small_clusters(np.where(has_link, labels, -1), min_size)
