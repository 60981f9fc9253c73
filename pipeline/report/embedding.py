"""Camera bias of the features: t-SNE by camera (Fig. 1 and 5) and a number that measures it.

Fig. 1 of the paper shows ImageNet features clustered by camera rather than by person; the
camera classifier with gradient reversal (Eq. 7-8) is meant to remove that. Two views of it:

- a 2-D t-SNE embedding of a sample of training features coloured by camera, before and after
  training; cameras that form their own islands mean a strong camera bias;
- :func:`camera_bias`: the mean cosine similarity of pairs of *different* identities seen by
  the same camera, against pairs of different identities seen by different cameras. Without
  camera bias the two are equal; their gap should shrink with training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from pipeline.report.figures import camera_colors, new_figure

PCA_DIMS = 50
MAX_PERPLEXITY = 30.0


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """``min(size, n)`` distinct rows out of ``n``, in increasing order, fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(size, n), replace=False))


def tsne_2d(features: np.ndarray, seed: int) -> np.ndarray:
    """(N, D) features -> (N, 2) t-SNE embedding, deterministic for a given ``seed``.

    Features are first projected on their top 50 principal components (the usual practice, and
    much faster for D = 2048); perplexity is 30, or (N - 1) / 3 for small N.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n, dim = features.shape
    dims = min(PCA_DIMS, n, dim)
    if dims < dim:
        features = PCA(n_components=dims, random_state=seed).fit_transform(features)
    tsne = TSNE(
        n_components=2,
        perplexity=min(MAX_PERPLEXITY, (n - 1) / 3),
        init="pca",
        random_state=seed,
    )
    return tsne.fit_transform(features.astype(np.float32, copy=False))


@dataclass(frozen=True)
class CameraBias:
    """Mean cosine similarity of different-identity pairs, same camera vs different cameras."""

    same_camera: float
    cross_camera: float
    same_camera_pairs: int
    cross_camera_pairs: int

    @property
    def gap(self) -> float:
        """``same_camera - cross_camera``: 0 without camera bias."""
        return self.same_camera - self.cross_camera


def camera_bias(features: np.ndarray, camid: np.ndarray, pid: np.ndarray) -> CameraBias:
    """Camera bias of (N, D) features over all pairs of rows with different known identities.

    Rows with pid -1 (unknown) take part in no pair. A mean over no pair is NaN. Memory grows as
    N^2, so pass a sample (the report uses the t-SNE sample).
    """
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = x @ x.T
    known = pid >= 0
    pairs = (
        np.triu(np.ones((len(pid), len(pid)), dtype=bool), k=1)
        & (pid[:, None] != pid[None, :])
        & known[:, None]
        & known[None, :]
    )
    same = camid[:, None] == camid[None, :]
    same_pairs, cross_pairs = pairs & same, pairs & ~same
    return CameraBias(
        same_camera=_mean(similarity[same_pairs]),
        cross_camera=_mean(similarity[cross_pairs]),
        same_camera_pairs=int(same_pairs.sum()),
        cross_camera_pairs=int(cross_pairs.sum()),
    )


def _mean(values: np.ndarray) -> float:
    return float(values.mean(dtype=np.float64)) if values.size else float("nan")


def plot_camera_embedding(
    panels: Sequence[tuple[str, np.ndarray]], camid: np.ndarray, title: str
) -> Figure:
    """Side-by-side scatter plots of 2-D embeddings, one colour per camera.

    ``panels`` is a list of (panel title, (N, 2) coordinates), all of the same N rows whose
    cameras are ``camid``.
    """
    colors = camera_colors(camid)
    fig = new_figure(6 * len(panels) + 1.5, 6.2)
    fig.suptitle(title)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    size = float(np.clip(8000 / max(len(camid), 1), 4, 30))
    for ax, (panel_title, xy) in zip(axes, panels, strict=True):
        for cam, color in colors.items():
            rows = camid == cam
            ax.scatter(
                xy[rows, 0], xy[rows, 1], s=size, color=color, alpha=0.8, label=f"camera {cam}"
            )
        ax.set_title(panel_title)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", markerscale=8 / size**0.5)
    return fig
