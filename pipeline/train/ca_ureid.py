"""CA-UReID's losses (camera-aware style separation and contrastive learning), as loss terms.

- Eq. 1: an instance memory bank M (N x D), one row per training image, initialised with the
  epoch's embeddings and moved towards each image's embedding after every step,
  ``M[i] <- mu M[i] + (1 - mu) f_i`` (then re-normalised, as in the memory-bank framework of
  SpCL that the paper follows).
- L_base, "the common InfoNCE loss": cross-entropy of an embedding's similarities to the cluster
  centres of the memory (the mean of each pseudo-label cluster's rows) over a temperature
  (:class:`InstanceMemoryLoss`).
- Eq. 4: L_sep, cross-entropy of a camera classifier (one fully connected layer) on the
  camera-specific embedding f_sp of the camera style separation module
  (:mod:`pipeline.models.css`), weighted by lambda_1 (:class:`CameraSeparationLoss`).
- Eq. 6-7: L_cacc, the camera-aware contrastive centre loss, weighted by lambda_2
  (:class:`CameraCentreContrastLoss`): the centre g_k^c of identity k in camera c over the memory
  bank and p_k^c over the batch; each batch centre p_k^c is an anchor, its positives every memory
  centre g of identity k (all cameras), its negatives the J memory centres of other identities
  nearest to it.
- Eq. 2: L = L_base + lambda_1 L_sep + lambda_2 L_cacc, the loop's weighted sum.

Centres are plain means of embeddings (Eq. 6), compared by dot product over a temperature.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError
from pipeline.settings import setting
from pipeline.train.losses import Batch, CameraTargetTerm, EpochTargets, LossContext, LossTerm
from pipeline.train.memory import group_means


# ---------------------------------------------------------------- formulas
def instance_memory_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    memory: torch.Tensor,
    memory_labels: torch.Tensor,
    n_clusters: int,
    temperature: float,
) -> torch.Tensor:
    """L_base: mean cross-entropy of ``features`` (B, D) with labels ``labels`` against the
    cluster centres of the instance memory (mean of the rows of ``memory`` (N, D) of each
    cluster of ``memory_labels``, 0..K-1), similarities over ``temperature``."""
    centres = group_means(memory, memory_labels, n_clusters)
    return F.cross_entropy(features @ centres.T / temperature, labels)


def momentum_update(memory: torch.Tensor, rows: torch.Tensor, features: torch.Tensor, mu: float):
    """Eq. 1 in place: ``M[i] <- normalise(mu M[i] + (1 - mu) f_i)`` for each row ``i`` of
    ``rows`` (a row listed twice takes its last sample)."""
    moved = mu * memory[rows] + (1 - mu) * features
    memory[rows] = F.normalize(moved, dim=1)


def camera_centres(
    features: torch.Tensor, labels: torch.Tensor, cameras: torch.Tensor, n_cameras: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6: the mean of ``features`` over each (identity, camera) pair present, and the
    identity of each centre. ``cameras`` are indices 0..n_cameras-1."""
    keys, groups = torch.unique(labels * n_cameras + cameras, return_inverse=True)
    return group_means(features, groups, len(keys)), keys // n_cameras


def camera_centre_contrastive_loss(
    anchors: torch.Tensor,
    anchor_ids: torch.Tensor,
    centres: torch.Tensor,
    centre_ids: torch.Tensor,
    negatives: int,
    temperature: float,
) -> torch.Tensor:
    """Eq. 7, averaged over the anchors: for each anchor p (A, D) of identity ``anchor_ids``,
    ``-(1/G) sum_i log S(p, g_i) / (S(p, g_i) + sum_j S(p, g_j))`` over its G positive centres
    g_i (``centres`` (M, D) of the same identity) and its ``negatives`` nearest centres g_j of
    other identities (all of them when there are fewer), ``S(p, g) = exp(p . g / tau)``."""
    scores = anchors @ centres.T / temperature
    positive = anchor_ids.unsqueeze(1) == centre_ids.unsqueeze(0)
    others = scores.masked_fill(positive, float("-inf"))
    nearest = others.topk(min(negatives, others.shape[1]), dim=1).values
    negative_sum = torch.logsumexp(nearest, dim=1, keepdim=True)  # log sum_j S(p, g_j)
    log_ratio = scores - torch.logaddexp(scores, negative_sum)
    per_anchor = -(log_ratio * positive).sum(dim=1) / positive.sum(dim=1)
    return per_anchor.mean()


# ---------------------------------------------------------------- loss terms
@dataclass(frozen=True)
class InstanceMemoryOptions:
    """CA-UReID's base loss against an instance memory bank (Eq. 1; L_base of Eq. 2)."""

    enabled: bool = setting(
        False,
        "train with the instance-memory contrastive loss L_base (momentum: the training "
        "momentum, Eq. 1; temperature: the training temperature)",
        flag="--instance-loss",
    )


class InstanceMemoryLoss(LossTerm):
    """L_base against cluster centres of an instance memory moved by Eq. 1 after every step;
    the memory is rebuilt from the epoch's embeddings at the start of every epoch."""

    name = "instance"
    options = InstanceMemoryOptions

    def __init__(self, momentum: float, temperature: float) -> None:
        super().__init__()
        self.momentum, self.temperature = momentum, temperature
        self.memory: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None

    @classmethod
    def build(cls, options: InstanceMemoryOptions, context: LossContext):
        return cls(context.momentum, context.temperature) if options.enabled else None

    def start_epoch(self, epoch: int, features: torch.Tensor, targets: EpochTargets) -> None:
        self.memory = F.normalize(features.float(), dim=1)
        self.labels = targets.labels

    def forward(self, batch: Batch) -> torch.Tensor:
        n_clusters = int(self.labels.max()) + 1
        return instance_memory_loss(
            batch.features, batch.labels, self.memory, self.labels, n_clusters, self.temperature
        )

    @torch.no_grad()
    def after_step(self, batch: Batch) -> None:
        momentum_update(self.memory, batch.positions, batch.features, self.momentum)


@dataclass(frozen=True)
class SeparationOptions:
    """CA-UReID's camera separation loss L_sep on the camera-specific embedding (Eq. 4)."""

    enabled: bool = setting(
        False,
        "train a camera classifier on the CSS module's camera-specific embedding (needs --css)",
        flag="--separation-loss",
    )
    weight: float = setting(
        0.4, "lambda_1, its weight in the total (Eq. 2)", minimum=0, flag="--separation-weight"
    )


class CameraSeparationLoss(CameraTargetTerm):
    """Eq. 4: cross-entropy of FC(f_sp) against each image's camera (the gradient reaches the
    attention mask and the backbone: this loss makes the camera-specific map camera-specific)."""

    name = "separation"
    options = SeparationOptions

    def __init__(self, feature_dim: int, camera_ids, weight: float) -> None:
        super().__init__(camera_ids)
        self.weight = weight
        self.classifier = nn.Linear(feature_dim, len(self.camera_ids))

    @classmethod
    def build(cls, options: SeparationOptions, context: LossContext):
        if not options.enabled:
            return None
        return cls(context.feature_dim, context.camera_ids, options.weight)

    def forward(self, batch: Batch) -> torch.Tensor:
        if "camera_specific" not in batch.outputs:
            raise PipelineError(
                "the separation loss (--separation-loss, config inter.losses.separation) needs "
                "the camera-specific embedding of the camera style separation module: enable it "
                "(--css, config inter.css.enabled)"
            )
        logits = self.classifier(batch.outputs["camera_specific"])
        return F.cross_entropy(logits, self.camera_index[batch.positions])


@dataclass(frozen=True)
class CaccOptions:
    """CA-UReID's camera-aware contrastive centre loss L_cacc (Eq. 6-7)."""

    enabled: bool = setting(
        False,
        "train with the camera-aware contrastive centre loss (needs --instance-loss: its "
        "centres come from that memory bank)",
        flag="--cacc-loss",
    )
    weight: float = setting(
        1.0, "lambda_2, its weight in the total (Eq. 2)", minimum=0, flag="--cacc-weight"
    )
    negatives: int = setting(
        50, "J, the nearest centres of other identities in each anchor's denominator", minimum=1
    )
    temperature: float = setting(
        0.07, "tau_cacc of Eq. 7", exclusive_minimum=0, flag="--cacc-temperature"
    )


class CameraCentreContrastLoss(LossTerm):
    """Eq. 7 with the batch's (identity, camera) centres as anchors and the instance memory's
    as positives and negatives (the memory of the ``instance`` term, found by :meth:`link`)."""

    name = "cacc"
    options = CaccOptions

    def __init__(self, weight: float, negatives: int, temperature: float) -> None:
        super().__init__()
        self.weight, self.negatives, self.temperature = weight, negatives, temperature
        self.camera_index: torch.Tensor | None = None
        self.n_cameras = 0

    @classmethod
    def build(cls, options: CaccOptions, context: LossContext):
        if not options.enabled:
            return None
        return cls(options.weight, options.negatives, options.temperature)

    def link(self, terms: dict[str, LossTerm]) -> None:
        bank = terms.get(InstanceMemoryLoss.name)
        if bank is None:
            raise PipelineError(
                "the camera-aware contrastive centre loss (--cacc-loss, config "
                "inter.losses.cacc) takes its centres from the instance memory bank: enable "
                "that term too (--instance-loss, config inter.losses.instance.enabled)"
            )
        # a reference, not a submodule: the bank's state is saved under its own name
        object.__setattr__(self, "bank", bank)

    def active(self, epoch: int) -> bool:
        return super().active(epoch) and self.bank.active(epoch)

    def start_epoch(self, epoch: int, features: torch.Tensor, targets: EpochTargets) -> None:
        cameras, self.camera_index = torch.unique(targets.cameras, return_inverse=True)
        self.n_cameras = len(cameras)

    def forward(self, batch: Batch) -> torch.Tensor:
        centres, centre_ids = camera_centres(
            self.bank.memory, self.bank.labels, self.camera_index, self.n_cameras
        )
        anchors, anchor_ids = camera_centres(
            batch.features, batch.labels, self.camera_index[batch.positions], self.n_cameras
        )
        return camera_centre_contrastive_loss(
            anchors, anchor_ids, centres, centre_ids, self.negatives, self.temperature
        )
