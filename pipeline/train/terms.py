"""Every loss term of stage 2 by name (the registry), and the building of a job's terms.

The name is the term's config section (``inter.losses.<name>``) and its log column
(``loss_<name>``); the order is the order the total sums them in. Adding a loss: its
:class:`~pipeline.train.losses.LossTerm` and settings class in a module, an entry here, and its
section in ``workflow/schemas/inter.schema.yaml`` (``python -m pipeline.settings`` regenerates
the settings schema). A term that needs the images' local labels says so
(``needs_local_labels``); the workflow then passes them to its job (``workflow/rules/common.smk``,
``LOCAL_LABEL_TERMS``, kept equal to that attribute by a test).
"""

from __future__ import annotations

from pipeline.train.ca_ureid import (
    CameraCentreContrastLoss,
    CameraSeparationLoss,
    InstanceMemoryLoss,
)
from pipeline.train.ccafl import GlobalIdLoss, InterCameraAdversarialLoss, IntraCameraLoss
from pipeline.train.losses import (
    CameraAdversarialLoss,
    ClusterContrastLoss,
    LossContext,
    LossTerm,
)

LOSSES: dict[str, type[LossTerm]] = {
    term.name: term
    for term in (
        ClusterContrastLoss,
        CameraAdversarialLoss,
        InstanceMemoryLoss,
        CameraSeparationLoss,
        CameraCentreContrastLoss,
        IntraCameraLoss,
        GlobalIdLoss,
        InterCameraAdversarialLoss,
    )
}


def build_terms(options: dict, context: LossContext) -> dict[str, LossTerm]:
    """The terms that ``options`` (name -> settings instance) switch on, built for ``context``
    and linked to each other, in registry order."""
    built = {name: LOSSES[name].build(options[name], context) for name in LOSSES if name in options}
    terms = {name: term for name, term in built.items() if term is not None}
    for term in terms.values():
        term.link(terms)
    return terms
