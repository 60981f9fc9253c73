"""Discard probability p over inter-camera epochs (paper Sec. III-C and Table IV).

With ``e`` the 0-based epoch, ``E`` the number of epochs and ``p0`` the probability at epoch 0:

================ ============================================
``none``         ``p0`` (no decay; the released code, p0 = 1)
``linear``       ``p0 (1 - e / E)``
``polynomial``   ``p0 (1 - e / E) ** power``       (power 2)
``exponential``  ``p0 gamma ** e``                  (gamma 0.9)
``cosine``       ``p0 (1 + cos(pi e / E)) / 2``
================ ============================================

All start at ``p0`` on epoch 0. ``linear``, ``polynomial`` and ``cosine`` fall towards 0 over
the run without reaching it (on the last epoch ``e = E - 1``, linear gives ``p0 / E``);
``exponential`` shrinks by ``gamma`` every epoch whatever ``E`` is.
"""

from __future__ import annotations

import math

from pipeline.errors import PipelineError

SCHEDULES = ("none", "linear", "polynomial", "exponential", "cosine")


def discard_probability(
    epoch: int,
    total_epochs: int,
    schedule: str,
    p0: float = 1.0,
    *,
    power: float = 2.0,
    gamma: float = 0.9,
) -> float:
    """The discard probability ``p`` of Eq. 5 at 0-based ``epoch`` of ``total_epochs``."""
    if schedule not in SCHEDULES:
        raise PipelineError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if total_epochs < 1 or not 0 <= epoch < total_epochs:
        raise PipelineError(
            f"--epoch {epoch} is outside 0..{total_epochs - 1} (--total-epochs {total_epochs}); "
            "epochs are counted from 0"
        )
    if not 0.0 <= p0 <= 1.0:
        raise PipelineError(f"--p0 must be a probability in [0, 1], got {p0}")
    progress = epoch / total_epochs
    factor = {
        "none": 1.0,
        "linear": 1.0 - progress,
        "polynomial": (1.0 - progress) ** power,
        "exponential": gamma**epoch,
        "cosine": 0.5 * (1.0 + math.cos(math.pi * progress)),
    }[schedule]
    return p0 * factor
