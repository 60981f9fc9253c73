"""Inter-camera association of per-camera identities (CCAFL Eq. 12, after Precise-ICS).

Each camera's identities (its local labels: annotated identities in the intra-camera supervised
setting, or stage 1's clusters) are linked across cameras by their centroids, the L2-normalised
mean embedding of each identity. Two identities i and j are joined by an edge when they are in
different cameras, each is the other's nearest identity in the other's camera (mutual nearest
neighbours, so an identity links to at most one identity per camera), and their centroids are
closer than T (Euclidean distance; between unit vectors ``d = sqrt(2 - 2 cos)``, in [0, 2]). The
connected components of that graph are the global pseudo labels: every image gets the component
of its identity, and an identity linked to none is a component of its own. No image is an
outlier.

Connected components can chain: A-B and B-C may join two identities A and C of one camera, which
the paper's first constraint forbids for a direct match but Eq. 12 does not prevent through a
chain; :func:`same_camera_merges` counts such components for the summary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.settings import setting


@dataclass(frozen=True)
class AssociationOptions:
    """Inter-camera association of each camera's identities (CCAFL Eq. 12)."""

    threshold: float = setting(
        1.7,
        "distance threshold T of Eq. 12 between L2-normalised identity centroids, in [0, 2] "
        "(paper: 1.7 on Market-1501, 1.5 on DukeMTMC-reID and MSMT17)",
        minimum=0,
        maximum=2,
    )


def camera_identities(
    cameras: np.ndarray, local_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each image's identity 0..G-1, the (camera, local label) pairs in sorted order, and each
    identity's camera (G,)."""
    pairs = np.stack([np.asarray(cameras, np.int64), np.asarray(local_labels, np.int64)], axis=1)
    unique, ids = np.unique(pairs, axis=0, return_inverse=True)
    return ids.ravel().astype(np.int64), unique[:, 0]


def identity_centroids(features: np.ndarray, ids: np.ndarray, n_ids: int) -> np.ndarray:
    """(G, D) L2-normalised mean embedding of each identity."""
    sums = np.zeros((n_ids, features.shape[1]), dtype=np.float64)
    np.add.at(sums, ids, features)
    return sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)


def association_edges(
    centroids: np.ndarray, id_cameras: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """The edges (i, j), i < j, of Eq. 12 between identities with ``centroids`` (G, D, unit
    length) in cameras ``id_cameras`` (G,)."""
    n_ids = len(centroids)
    similarity = np.clip(centroids @ centroids.T, -1.0, 1.0)
    distance = np.sqrt(np.maximum(2.0 - 2.0 * similarity, 0.0))
    cameras = np.unique(id_cameras)
    # nearest[i, c]: the identity of camera c nearest to identity i (a loop over cameras only)
    nearest = np.empty((n_ids, len(cameras)), dtype=np.int64)
    for column, camera in enumerate(cameras):
        members = np.flatnonzero(id_cameras == camera)
        nearest[:, column] = members[np.argmin(distance[:, members], axis=1)]
    camera_column = np.searchsorted(cameras, id_cameras)
    i = np.repeat(np.arange(n_ids), len(cameras))
    j = nearest.ravel()
    mutual = nearest[j, camera_column[i]] == i
    keep = (id_cameras[i] != id_cameras[j]) & mutual & (distance[i, j] < threshold) & (i < j)
    return i[keep], j[keep]


def associate(
    features: np.ndarray, cameras: np.ndarray, local_labels: np.ndarray, threshold: float
) -> np.ndarray:
    """Global pseudo labels (N,) of images with L2-normalised ``features`` (N, D), ``cameras``
    and per-camera ``local_labels``: the connected component of each image's identity in the
    graph of Eq. 12, numbered 0..K-1."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ids, id_cameras = camera_identities(cameras, local_labels)
    centroids = identity_centroids(features, ids, len(id_cameras))
    i, j = association_edges(centroids, id_cameras, threshold)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(len(id_cameras),) * 2)
    _, component = connected_components(graph, directed=False)
    return np.unique(component, return_inverse=True)[1][ids].astype(np.int64)


def same_camera_merges(labels: np.ndarray, cameras: np.ndarray, local_labels: np.ndarray) -> int:
    """How many pseudo labels hold two or more identities of one camera (chains of Eq. 12)."""
    ids, id_cameras = camera_identities(cameras, local_labels)
    id_labels = np.zeros(len(id_cameras), dtype=np.int64)
    id_labels[ids] = labels
    keys, counts = np.unique(np.stack([id_labels, id_cameras], axis=1), axis=0, return_counts=True)
    return len(np.unique(keys[counts > 1, 0]))
