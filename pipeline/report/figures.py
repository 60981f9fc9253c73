"""Figure helpers shared by the report's plots.

Figures are made with :class:`matplotlib.figure.Figure` directly, never through ``pyplot``: no
window, no global figure registry to leak, and the PNG is rendered by the Agg canvas whatever
backend the environment selects.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pipeline.io import atomic_output

NOT_AVAILABLE_COLOR = "0.45"


def new_figure(width: float, height: float) -> Figure:
    """A blank figure of ``width`` x ``height`` inches whose layout keeps labels apart."""
    return Figure(figsize=(width, height), layout="constrained")


def show_not_available(ax: Axes, what: str) -> None:
    """Mark a panel whose data is missing: its title stays, the plot says what is absent."""
    ax.text(
        0.5,
        0.5,
        f"{what}:\nnot available",
        ha="center",
        va="center",
        transform=ax.transAxes,
        color=NOT_AVAILABLE_COLOR,
    )
    ax.set_xticks([])
    ax.set_yticks([])


def camera_colors(cameras: Sequence[int]) -> dict[int, tuple]:
    """One distinct colour per camera id (tab10 up to 10 cameras, tab20 up to 20, then turbo)."""
    cameras = sorted(set(int(c) for c in cameras))
    n = len(cameras)
    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
    elif n <= 20:
        cmap = matplotlib.colormaps["tab20"]
    else:
        cmap = matplotlib.colormaps["turbo"].resampled(n)
    return {cam: cmap(i) for i, cam in enumerate(cameras)}


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> None:
    """Render ``fig`` atomically to ``path``; the format follows the suffix (.png, .svg, .pdf)."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=dpi)


def percent(value: float) -> str:
    """A fraction in [0, 1] as a percentage with one decimal; NaN as ``n/a``."""
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.1f}"
