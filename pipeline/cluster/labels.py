"""Label bookkeeping shared by the clusterers, the refinement and their error messages."""

from __future__ import annotations

import numpy as np


def renumber(labels: np.ndarray) -> np.ndarray:
    """Map the labels >= 0 onto 0..K-1 consecutively, keeping their order; negatives become -1.

    The smallest label becomes 0, the next 1, and so on, so labels that are already
    consecutive come back unchanged.
    """
    labels = np.asarray(labels, dtype=np.int64)
    out = np.full(labels.shape, -1, dtype=np.int64)
    clustered = labels >= 0
    out[clustered] = np.unique(labels[clustered], return_inverse=True)[1]
    return out


def drop_small_clusters(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Label -1 every member of a cluster with fewer than ``min_size`` members, then renumber."""
    labels = np.asarray(labels, dtype=np.int64)
    clustered = labels >= 0
    sizes = np.bincount(labels[clustered]) if clustered.any() else np.zeros(0, dtype=np.int64)
    small = np.zeros(labels.shape, dtype=bool)
    small[clustered] = sizes[labels[clustered]] < min_size
    return renumber(np.where(small, -1, labels))


def first_rows(rows: np.ndarray, count: int = 5) -> str:
    """The first ``count`` row numbers of ``rows`` for an error message ("3, 8, ...")."""
    shown = ", ".join(str(int(r)) for r in rows[:count])
    return shown + (", ..." if len(rows) > count else "")
