"""Intra-camera supervised (ICS) labels: each camera's identities, with no link across cameras.

In the ICS setting (CCAFL Sec. III-A; Zhu et al., IJCV 2021) identities are annotated within
each camera independently: the same person seen by two cameras is two unrelated identities. From
a dataset whose annotations do link cameras (one person id everywhere), the ICS labels keep
only what a per-camera annotator would have written: which of a camera's images show the same
person. Each camera's identities are numbered 0..N_c-1 by a seeded permutation of their order of
first appearance in the index, drawn for that camera alone, so a label is a function of the
camera's own grouping of its images, the seed and the camera: neither the person ids' values nor
any other camera's images enter it, and equal numbers in two cameras mean nothing.
"""

from __future__ import annotations

import numpy as np


def ics_local_labels(cameras: np.ndarray, pids: np.ndarray, seed: int) -> np.ndarray:
    """Per-camera identity labels (N,) of images with ``cameras`` and person ids ``pids``
    (all >= 0): within a camera, equal for equal pids, numbered 0..N_c-1 as the module
    docstring says."""
    cameras = np.asarray(cameras, dtype=np.int64)
    pids = np.asarray(pids, dtype=np.int64)
    labels = np.empty(len(pids), dtype=np.int64)
    for camera in np.unique(cameras):  # a loop over cameras, not identities
        rows = np.flatnonzero(cameras == camera)
        _, first, inverse = np.unique(pids[rows], return_index=True, return_inverse=True)
        order = np.argsort(np.argsort(first))  # rank of each identity by first appearance
        permutation = np.random.default_rng([seed, int(camera)]).permutation(len(first))
        labels[rows] = permutation[order[inverse.ravel()]]
    return labels
