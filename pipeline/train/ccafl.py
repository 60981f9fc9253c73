"""CCAFL's losses in the intra-camera supervised (ICS) setting, as loss terms (no CLIP text).

Every image carries its camera's identity label (:class:`pipeline.train.losses.LocalIdentities`:
the per-camera identities, made unique by their camera, "global IDs" in the paper's words, G of
them) and a cross-camera pseudo label from the inter-camera association of Eq. 12
(:mod:`pipeline.cluster.association`). The terms:

- ICDL, Eq. 4-8 and 10 without the text term of Eq. 9-11 (:class:`IntraCameraLoss`): a hybrid
  memory per camera, the centroid of each identity (Eq. 4, moved by Eq. 6 with the batch means)
  and every image's embedding (replaced by the newest one, Eq. 5). L_intra1 (Eq. 7): cross-
  entropy of an image against the centroids of its own camera's identities; L_intra2 (Eq. 8):
  the same against, for each identity of its camera, the hardest memory instance (its own
  identity's least similar one, each other identity's most similar one). L_ICDL = lambda
  L_intra1 + (1 - lambda) L_intra2.
- The prototypical inter-camera contrastive loss of Eq. 13-14 is the cluster contrastive loss
  of :mod:`pipeline.train.losses` on the association's pseudo labels (its memory is the mean of
  each pseudo label's embeddings, moved by Eq. 13); CCAFL's schedule starts it after the
  intra-camera epochs (``first_epoch``).
- L_GID, Eq. 17 (:class:`GlobalIdLoss`): a classifier over the G identities with L2-normalised
  weights on L2-normalised, detached embeddings: it learns to tell every identity of every
  camera apart and moves nothing in the encoder.
- ICAL, Eq. 18-19 (:class:`InterCameraAdversarialLoss`): the same classifier, its weights
  detached, on the embeddings: a multi-positive cross-entropy whose positives are the identities
  associated with the image's (its pseudo label's), with the label smoothing q(g) of Eq. 19; the
  encoder learns to make the classifier unable to tell an identity's cameras apart.
- Eq. 20, the schedule: each term's first and last epoch (ICDL the first E_intra epochs, the
  contrastive loss after them, ICAL from E_adv, L_GID always).

Losses are averaged over the batch (the paper's Eq. 7-8 and 17-18 are written as sums).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError
from pipeline.settings import setting
from pipeline.train.losses import Batch, EpochTargets, LossContext, LossTerm
from pipeline.train.memory import ClusterMemory, cluster_centroids

NEGATIVE = float("-inf")


# ---------------------------------------------------------------- formulas
def intra_camera_centroid_loss(
    features: torch.Tensor,
    ids: torch.Tensor,
    centroids: torch.Tensor,
    same_camera: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Eq. 7: cross-entropy of each embedding (B, D) against the centroids (G, D) of its own
    camera's identities, ``same_camera`` (B, G) marking them; ``ids`` (B,) its identity."""
    logits = (features @ centroids.T / temperature).masked_fill(~same_camera, NEGATIVE)
    return F.cross_entropy(logits, ids)


def hardest_instances(
    similarities: torch.Tensor, memory_ids: torch.Tensor, ids: torch.Tensor, n_ids: int
) -> torch.Tensor:
    """(B, G) for Eq. 8: for each embedding and identity g, the similarity to g's hardest
    memory instance: the least similar one for the embedding's own identity ``ids``, the most
    similar one for every other identity. ``similarities`` (B, N) are to the memory rows of
    identities ``memory_ids`` (N,); an identity without a row gets -inf."""
    groups = memory_ids.unsqueeze(0).expand_as(similarities)
    empty = similarities.new_full((len(similarities), n_ids), NEGATIVE)
    most = empty.scatter_reduce(1, groups, similarities, "amax")
    own = memory_ids.unsqueeze(0) == ids.unsqueeze(1)
    least = similarities.masked_fill(~own, float("inf")).amin(dim=1)
    return most.scatter(1, ids.unsqueeze(1), least.unsqueeze(1))


def intra_camera_hard_loss(
    features: torch.Tensor,
    ids: torch.Tensor,
    memory: torch.Tensor,
    memory_ids: torch.Tensor,
    same_camera: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Eq. 8: cross-entropy of each embedding against the hardest instance of every identity
    of its camera (:func:`hardest_instances`), its own identity's being the positive."""
    hardest = hardest_instances(features @ memory.T, memory_ids, ids, same_camera.shape[1])
    logits = (hardest / temperature).masked_fill(~same_camera, NEGATIVE)
    return F.cross_entropy(logits, ids)


def global_id_logits(
    features: torch.Tensor, weights: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Eq. 17-18: ``f(x) . phi_g / tau`` with L2-normalised embeddings and weights phi."""
    return F.normalize(features, dim=1) @ F.normalize(weights, dim=1).T / temperature


def ical_weights(ids: torch.Tensor, positive: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Eq. 19: q(g) (B, G): ``1 - eps + eps/G`` for the image's own identity, ``eps/G`` for the
    other identities of ``positive`` (B, G; it holds the own identity, so G counts it), 0 for
    the negatives."""
    share = positive.float() * (epsilon / positive.sum(dim=1, keepdim=True))
    own = F.one_hot(ids, positive.shape[1]).float()
    return share + (1 - epsilon) * own


def ical_loss(
    logits: torch.Tensor, ids: torch.Tensor, positive: torch.Tensor, epsilon: float
) -> torch.Tensor:
    """Eq. 18, averaged over the batch: ``-sum_g q(g) log(exp(s_g) / (exp(s_g) + sum_{j in
    G-} exp(s_j)))`` with ``s = logits`` (B, G), G- the identities not in ``positive``."""
    negative_sum = torch.logsumexp(logits.masked_fill(positive, NEGATIVE), dim=1, keepdim=True)
    log_ratio = logits - torch.logaddexp(logits, negative_sum)
    weights = ical_weights(ids, positive, epsilon)
    return -(weights * log_ratio.masked_fill(~positive, 0.0)).sum(dim=1).mean()


# ---------------------------------------------------------------- loss terms
class LocalIdentityTerm(LossTerm):
    """A term that works on the images' local identities: each position's identity and each
    identity's camera, as buffers that move with the term."""

    needs_local_labels = True

    def __init__(self, context: LossContext) -> None:
        super().__init__()
        local = context.local_identities
        if local is None:
            raise PipelineError(
                f"the {self.name} loss (config inter.losses.{self.name}) works on each camera's "
                "identities: pass the local labels (--local-labels; config inter.local_labels "
                "chooses stage 1's clusters or the annotations)"
            )
        self.n_ids = len(local)
        ids = torch.as_tensor(np.asarray(local.ids), dtype=torch.int64)
        self.register_buffer("ids", ids, persistent=False)
        cameras = torch.as_tensor(np.asarray(local.cameras), dtype=torch.int64)
        self.register_buffer("id_cameras", cameras, persistent=False)
        # the identities with images in this job (the others have no memory and no centroid)
        present = torch.bincount(ids, minlength=self.n_ids) > 0
        self.register_buffer("present", present, persistent=False)

    def same_camera(self, positions: torch.Tensor) -> torch.Tensor:
        """(B, G): which identities belong to the camera of each position's image."""
        return self.id_cameras[self.ids[positions]].unsqueeze(1) == self.id_cameras.unsqueeze(0)


@dataclass(frozen=True)
class IcdlOptions:
    """CCAFL's intra-camera discriminative learning, L_ICDL (Eq. 4-8, 10; no text term)."""

    enabled: bool = setting(
        False,
        "train with the intra-camera discriminative loss (needs local labels)",
        flag="--icdl-loss",
    )
    balance: float = setting(
        0.8,
        "lambda of Eq. 10: L_ICDL = lambda L_intra1 + (1 - lambda) L_intra2 (paper: 0.8)",
        minimum=0,
        maximum=1,
        flag="--icdl-balance",
    )
    last_epoch: int = setting(
        5,
        "E_intra of Eq. 20: the loss trains in the stage-2 epochs up to this one (counted from "
        "1; paper: 5)",
        minimum=1,
        flag="--icdl-last-epoch",
    )


class IntraCameraLoss(LocalIdentityTerm):
    """L_ICDL against the per-camera hybrid memory (centroids and instances), rebuilt from the
    epoch's embeddings at the start of every epoch; momentum and temperature are the training
    ones (the paper: 0.1 and 0.05)."""

    name = "icdl"
    options = IcdlOptions

    def __init__(self, context: LossContext, balance: float, last_epoch: int) -> None:
        super().__init__(context)
        self.momentum, self.temperature = context.momentum, context.temperature
        self.balance, self.last_epoch = balance, last_epoch
        self.centroids: ClusterMemory | None = None
        self.instances: torch.Tensor | None = None

    @classmethod
    def build(cls, options: IcdlOptions, context: LossContext):
        if not options.enabled:
            return None
        return cls(context, options.balance, options.last_epoch)

    def start_epoch(self, epoch: int, features: torch.Tensor, targets: EpochTargets) -> None:
        self.instances = F.normalize(features.float(), dim=1)
        centroids = cluster_centroids(self.instances, self.ids, self.n_ids)
        self.centroids = ClusterMemory(centroids, self.momentum, self.temperature)

    def forward(self, batch: Batch) -> torch.Tensor:
        ids = self.ids[batch.positions]
        same_camera = self.same_camera(batch.positions) & self.present
        first = intra_camera_centroid_loss(
            batch.features, ids, self.centroids.features, same_camera, self.temperature
        )
        second = intra_camera_hard_loss(
            batch.features, ids, self.instances, self.ids, same_camera, self.temperature
        )
        return self.balance * first + (1 - self.balance) * second

    @torch.no_grad()
    def after_step(self, batch: Batch) -> None:
        self.centroids.update(batch.features, self.ids[batch.positions])
        self.instances[batch.positions] = batch.features


@dataclass(frozen=True)
class GidOptions:
    """CCAFL's global ID classifier, L_GID (Eq. 17)."""

    enabled: bool = setting(
        False,
        "train the classifier over every camera's identities (on detached embeddings; needs "
        "local labels)",
        flag="--gid-loss",
    )
    temperature: float = setting(
        0.05,
        "tau of Eq. 17-18 (the paper gives 0.05 for its other temperatures)",
        exclusive_minimum=0,
        flag="--gid-temperature",
    )


class GlobalIdLoss(LocalIdentityTerm):
    """L_GID: cross-entropy of the normalised classifier on detached, normalised embeddings
    against each image's identity. The weights start, at the term's first epoch, at each
    identity's mean embedding (the paper does not say; from random weights a classifier trained
    for a few hundred steps would still be near chance when ICAL starts)."""

    name = "gid"
    options = GidOptions

    def __init__(self, context: LossContext, temperature: float) -> None:
        super().__init__(context)
        self.temperature = temperature
        self.weights = nn.Parameter(torch.randn(self.n_ids, context.feature_dim))
        self.register_buffer("initialised", torch.tensor(False))

    @classmethod
    def build(cls, options: GidOptions, context: LossContext):
        return cls(context, options.temperature) if options.enabled else None

    @torch.no_grad()
    def start_epoch(self, epoch: int, features: torch.Tensor, targets: EpochTargets) -> None:
        if bool(self.initialised):
            return
        sums = torch.zeros_like(self.weights).index_add_(0, self.ids, features.float())
        self.weights[self.present] = F.normalize(sums[self.present], dim=1)
        self.initialised.fill_(True)

    def forward(self, batch: Batch) -> torch.Tensor:
        logits = global_id_logits(batch.features.detach(), self.weights, self.temperature)
        return F.cross_entropy(logits, self.ids[batch.positions])

    def get_extra_state(self) -> dict:
        return {"identities": self.n_ids}

    def set_extra_state(self, state: dict) -> None:
        if state["identities"] != self.n_ids:
            raise PipelineError(
                f"--init's global ID classifier has {state['identities']} identities but the "
                f"local labels (--local-labels) hold {self.n_ids}; continue with the local "
                "labels it was trained on, or start from init-model's checkpoint"
            )


@dataclass(frozen=True)
class IcalOptions:
    """CCAFL's inter-camera adversarial loss, ICAL (Eq. 18-19)."""

    enabled: bool = setting(
        False,
        "train with the inter-camera adversarial loss on the global ID classifier (needs "
        "--gid-loss)",
        flag="--ical-loss",
    )
    epsilon: float = setting(
        0.8,
        "label smoothing epsilon of Eq. 19 over the associated identities (paper: 0.8)",
        exclusive_minimum=0,
        maximum=1,
        flag="--ical-epsilon",
    )
    first_epoch: int = setting(
        40,
        "E_adv of Eq. 20: the first stage-2 epoch (counted from 1) with ICAL (paper: 40 of 80)",
        minimum=1,
        flag="--ical-first-epoch",
    )


class InterCameraAdversarialLoss(LocalIdentityTerm):
    """ICAL on the ``gid`` term's classifier (found by :meth:`link`), its weights detached; an
    image's positives are the identities that share its pseudo label in this epoch."""

    name = "ical"
    options = IcalOptions

    def __init__(self, context: LossContext, epsilon: float, first_epoch: int) -> None:
        super().__init__(context)
        self.epsilon, self.first_epoch = epsilon, first_epoch
        self.members: torch.Tensor | None = None

    @classmethod
    def build(cls, options: IcalOptions, context: LossContext):
        if not options.enabled:
            return None
        return cls(context, options.epsilon, options.first_epoch)

    def link(self, terms: dict[str, LossTerm]) -> None:
        classifier = terms.get(GlobalIdLoss.name)
        if classifier is None:
            raise PipelineError(
                "the inter-camera adversarial loss (--ical-loss, config inter.losses.ical) "
                "works on the global ID classifier: enable it too (--gid-loss, config "
                "inter.losses.gid.enabled)"
            )
        # a reference, not a submodule: the classifier is saved and optimised as its own term
        object.__setattr__(self, "classifier", classifier)

    def start_epoch(self, epoch: int, features: torch.Tensor, targets: EpochTargets) -> None:
        """``members`` (K, G): which identities each pseudo label holds (G_i^+ of its images)."""
        n_labels = int(targets.labels.max()) + 1
        self.members = torch.zeros(n_labels, self.n_ids, dtype=torch.bool, device=self.ids.device)
        self.members[targets.labels, self.ids] = True

    def forward(self, batch: Batch) -> torch.Tensor:
        gid = self.classifier
        logits = global_id_logits(batch.features, gid.weights.detach(), gid.temperature)
        positive = self.members[batch.labels]
        return ical_loss(logits, self.ids[batch.positions], positive, self.epsilon)
