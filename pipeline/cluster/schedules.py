"""Discard probability p over inter-camera epochs (paper Sec. III-C and Table IV).

The paper names the schedules (Table IV) but gives no formula; these are this project's. With
``e`` the 0-based epoch, ``E`` the number of epochs and ``p0`` the probability at epoch 0:

================ ================================== =====================================
schedule         p(e)                               on the last epoch ``e = E - 1``
================ ================================== =====================================
``none``         ``p0``                             ``p0`` (the released code, p0 = 1)
``linear``       ``p0 (1 - e / E)``                 ``p0 / E``
``polynomial``   ``p0 (1 - e / E) ** power``        ``p0 / E ** power``   (power 2)
``exponential``  ``p0 gamma ** e``                  ``p0 gamma ** (E - 1)`` (gamma 0.9)
``cosine``       ``p0 (1 + cos(pi e / (s E))) / 2`` ``p0 sin^2(pi / (2 E))`` at s = 1
================ ================================== =====================================

All start at ``p0`` on epoch 0. ``linear``, ``polynomial`` and ``cosine`` (with the default
``cosine_span`` s = 1) fall towards 0 over the run without reaching it: for E = 50 the last
epoch has 0.02, 0.0004 and 0.001 times ``p0``. ``exponential`` shrinks by ``gamma`` every epoch
whatever ``E`` is (0.0057 ``p0`` on the last of 50 epochs).

``cosine_span`` stretches the cosine over ``s E`` epochs, so that it stops part way down. The
only trace of a decay in the released code is a commented-out line of
``inter_camera_training.py`` (line 249, and the same in two scripts of earlier commits),
``decay = 0.5*(1+math.cos(math.pi*epoch/(3*args.epochs)))``, with a member discarded when
``random.random() <= decay``: the cosine here with p0 = 1 and s = 3, which ends at 0.76 for
E = 50 (0.75 as E grows). The line in use is ``decay = 1``.
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
    cosine_span: float = 1.0,
) -> float:
    """The discard probability ``p`` of Eq. 5 at 0-based ``epoch`` of ``total_epochs``.

    ``cosine_span`` (> 0): the cosine schedule's half period in units of ``total_epochs``
    (module docstring; 3 is the released code's commented-out decay)."""
    if schedule not in SCHEDULES:
        raise PipelineError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if total_epochs < 1 or not 0 <= epoch < total_epochs:
        raise PipelineError(
            f"--epoch {epoch} is outside 0..{total_epochs - 1} (--total-epochs {total_epochs}); "
            "epochs are counted from 0"
        )
    if not 0.0 <= p0 <= 1.0:
        raise PipelineError(f"--p0 must be a probability in [0, 1], got {p0}")
    if not cosine_span > 0:
        raise PipelineError(f"--cosine-span must be positive, got {cosine_span}")
    progress = epoch / total_epochs
    factor = {
        "none": 1.0,
        "linear": 1.0 - progress,
        "polynomial": (1.0 - progress) ** power,
        "exponential": gamma**epoch,
        "cosine": 0.5 * (1.0 + math.cos(math.pi * progress / cosine_span)),
    }[schedule]
    return p0 * factor
