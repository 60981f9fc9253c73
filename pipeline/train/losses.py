"""Losses of both training stages: the (weighted) cluster contrastive loss and the camera
domain loss behind a gradient reversal layer, as formulas and as the named loss terms that the
training loop sums.

- Eq. 3 / Eq. 6: cross-entropy of the similarities to the cluster memory over a temperature,
  each sample weighted by its cluster weight w_i (Eq. 6; all ones gives Eq. 3).
- Eq. 7: the gradient reversal layer R_lambda, identity forward, -lambda * grad backward.
- Eq. 8: the camera classifier D, an MLP on R_lambda(f(x)) trained with cross-entropy on the
  camera labels; through R_lambda the encoder is pushed to make cameras indistinguishable.
- Eq. 9: L = L_inter + beta * L_domain: the loop sums the terms, each times its ``weight``.

A loss term (:class:`LossTerm`) is a module with a name, a weight in the total, and hooks: it
says in which epochs it is active (by default the stage-2 epochs ``first_epoch`` to
``last_epoch``, counted from 1 as the logs count them), once every term of the job is built it
may find the others it works with (:meth:`LossTerm.link`), at the start of an active epoch it
sees the epoch's data (to rebuild a memory), each step it maps a :class:`Batch` to a scalar, and
after the optimizer's step it may update its state. Its parameters (a classifier) are optimised
with the model's and saved in the checkpoint under its name. :data:`pipeline.train.terms.LOSSES`
holds every term by name (these two, CA-UReID's in :mod:`pipeline.train.ca_ureid` and CCAFL's in
:mod:`pipeline.train.ccafl`), with the settings class that configures it (the config's
``inter.losses.<name>`` section).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError
from pipeline.settings import setting
from pipeline.train.memory import ClusterMemory

CLASSIFIER_HIDDEN = 256
# how the weighted loss of Eq. 6 is averaged over a batch (weighted_contrastive_loss)
NORMALISATIONS = ("batch", "weights")
# the camera classifier's layers (CameraClassifier)
CAMERA_HEADS = ("mlp", "release")


def weighted_contrastive_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    normalisation: str = "batch",
) -> torch.Tensor:
    """Eq. 6: ``(1/B) sum_i w_i * CE(logits_i, y_i)``; without ``weights``, Eq. 3 (mean CE).

    ``logits`` (B, K) are memory similarities over the temperature (see ``ClusterMemory``).
    ``normalisation="batch"``: the sum is divided by the batch size, not by the sum of the
    weights, so a weight scales its sample's gradient and a batch whose weights are all zero
    gives 0 (never 0/0). ``"weights"``: divided by the sum of the weights, as the released code
    (``F.cross_entropy`` with the cluster weights as class weights, ``calr/models/cm.py`` line
    100), which there gives 0/0 = NaN for a batch whose weights are all zero; here 0.
    """
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
    losses = F.cross_entropy(logits, labels, reduction="none")
    if weights is None:
        return losses.mean()
    total = (losses * weights).sum()
    if normalisation == "batch":
        return total / len(labels)
    return total / weights.sum().clamp_min(torch.finfo(total.dtype).tiny)


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coefficient: float) -> torch.Tensor:
        ctx.coefficient = coefficient
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.coefficient * grad, None


class GradientReversal(nn.Module):
    """Eq. 7: ``R_lambda(x) = x`` forward; the gradient is multiplied by ``-lambda`` backward."""

    def __init__(self, coefficient: float = 1.0) -> None:
        super().__init__()
        self.coefficient = coefficient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ReverseGradient.apply(x, self.coefficient)

    def extra_repr(self) -> str:
        return f"lambda={self.coefficient}"


class CameraClassifier(nn.Module):
    """The camera domain classifier D of Eq. 8 behind R_lambda: embedding (B, D) -> what the
    cross-entropy of Eq. 8 takes as logits (B, C). The paper does not give its layers.

    ``head="mlp"`` (this project's): Linear(D, 256), BatchNorm, ReLU, Linear(256, C), whose
    output are the logits. ``head="release"``: the released code's layers (``calr/models/
    resnet.py`` lines 67-76), Linear(D, 100), BatchNorm, ReLU, Dropout(0.5), Linear(100, 100),
    BatchNorm, ReLU, Linear(100, C), LogSoftmax, and, as its trainer (``calr/trainers.py``
    lines 36-37), a softmax of that output: the cross-entropy then normalises probabilities a
    second time, so the loss stays between ln(e + C - 1) - 1 and ln(e + C - 1) and its
    gradient is small.
    """

    def __init__(
        self, feature_dim: int, num_cameras: int, grl_lambda: float = 1.0, head: str = "mlp"
    ) -> None:
        super().__init__()
        if head not in CAMERA_HEADS:
            raise ValueError(f"head must be one of {CAMERA_HEADS}, got {head!r}")
        self.reversal = GradientReversal(grl_lambda)
        self.head = head
        if head == "mlp":
            layers = [
                nn.Linear(feature_dim, CLASSIFIER_HIDDEN),
                nn.BatchNorm1d(CLASSIFIER_HIDDEN),
                nn.ReLU(inplace=True),
                nn.Linear(CLASSIFIER_HIDDEN, num_cameras),
            ]
        else:
            layers = [
                nn.Linear(feature_dim, 100),
                nn.BatchNorm1d(100),
                nn.ReLU(inplace=True),
                nn.Dropout(0.5),
                nn.Linear(100, 100),
                nn.BatchNorm1d(100),
                nn.ReLU(inplace=True),
                nn.Linear(100, num_cameras),
                nn.LogSoftmax(dim=1),
            ]
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        output = self.mlp(self.reversal(features))
        return output.softmax(dim=1) if self.head == "release" else output


def camera_domain_loss(logits: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
    """Eq. 8, averaged over the batch: cross-entropy of the camera logits against the camera
    index of each sample (0..C-1, the position of its camid in the classifier's order)."""
    return F.cross_entropy(logits, cameras)


# ---------------------------------------------------------------- loss terms
@dataclass
class EpochTargets:
    """Per-position training targets of one epoch, on the training device."""

    labels: torch.Tensor  # (N,) int64 pseudo label of each position, 0..K-1
    cameras: torch.Tensor  # (N,) int64 camid of each position
    weights: torch.Tensor | None = None  # (N,) float32 cluster weight (Eq. 6), None = Eq. 3


@dataclass
class Batch:
    """One training step's embeddings and targets."""

    features: torch.Tensor  # (B, D) float32 L2-normalised embeddings
    positions: torch.Tensor  # (B,) positions in the epoch's training set
    targets: EpochTargets
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)  # other model outputs

    @property
    def labels(self) -> torch.Tensor:
        return self.targets.labels[self.positions]

    @property
    def cameras(self) -> torch.Tensor:
        return self.targets.cameras[self.positions]

    @property
    def weights(self) -> torch.Tensor | None:
        weights = self.targets.weights
        return None if weights is None else weights[self.positions]


@dataclass(frozen=True)
class LocalIdentities:
    """The per-camera identities of a job's images (the local labels, each made unique by its
    camera): ``ids`` (N,) is each position's identity 0..G-1, ``cameras`` (G,) each identity's
    camid. In the intra-camera supervised setting these are the annotated identities of each
    camera, which no cross-camera link joins."""

    ids: np.ndarray
    cameras: np.ndarray

    def __len__(self) -> int:
        return len(self.cameras)


@dataclass(frozen=True)
class LossContext:
    """What a loss term may need to be built: the embedding size, the training cameras (sorted
    camids), the memory's momentum, temperature and update rule (Eq. 2), and the images' local
    identities when the job was given local labels (None otherwise)."""

    feature_dim: int
    camera_ids: tuple[int, ...]
    momentum: float
    temperature: float
    memory_update: str = "sample"
    local_identities: LocalIdentities | None = None


class LossTerm(nn.Module):
    """A named term of the training loss (module docstring)."""

    name: ClassVar[str]
    options: ClassVar[type | None] = None  # its settings class, None = not configurable
    # whether it needs the images' local identities (LossContext.local_identities)
    needs_local_labels: ClassVar[bool] = False
    weight: float = 1.0
    first_epoch: int = 1  # first and last active epoch, counted from 1; None = no last
    last_epoch: int | None = None

    @classmethod
    def build(cls, options, context: LossContext) -> LossTerm | None:
        """The term for these settings, or None when they switch it off."""
        raise NotImplementedError

    def link(self, terms: dict[str, LossTerm]) -> None:
        """Called once every term of the job is built, with all of them by name: a term that
        works on another's state (a memory, a classifier) keeps a reference to it here."""

    def active(self, epoch: int) -> bool:
        """Whether the term is part of the loss in (0-based) ``epoch``: epochs ``first_epoch``
        to ``last_epoch`` counted from 1. An inactive term is neither computed nor logged that
        epoch, and keeps its state."""
        last = self.last_epoch
        return self.first_epoch <= epoch + 1 and (last is None or epoch + 1 <= last)

    def start_epoch(self, epoch: int, features: torch.Tensor, targets: EpochTargets) -> None:
        """Called before each epoch in which the term is active, with the epoch's embeddings
        (N, D) by the current model and its targets."""

    def after_step(self, batch: Batch) -> None:
        """Called after the optimizer's step, with the step's (detached) batch."""


@dataclass(frozen=True)
class ContrastiveOptions:
    """The cluster contrastive loss against the cluster memory (Eq. 1-3, 6; CCAFL's
    prototypical inter-camera contrastive loss, Eq. 13-14)."""

    enabled: bool = setting(
        True, "train with the cluster contrastive loss", flag="--contrastive-loss"
    )
    cluster_weights: bool = setting(
        True,
        "weight each sample by its cluster's camera entropy, w = ln(1 + H) (Eq. 6, the labels' "
        "weight column); off: Eq. 3",
        flag="--cluster-weights",
    )
    weights_from_epoch: int = setting(
        1,
        "first stage-2 epoch (counted from 1) trained with the cluster weights; the epochs "
        "before it use Eq. 3. 1 = every epoch (the paper); the released code: 6",
        minimum=1,
    )
    normalisation: str = setting(
        "batch",
        "what the weighted loss (Eq. 6) is divided by: batch = the batch size (Eq. 6); weights "
        "= the sum of the batch's weights (the released code, PyTorch's class-weighted "
        "cross-entropy)",
        choices=NORMALISATIONS,
        flag="--weight-normalisation",
    )
    first_epoch: int = setting(
        1,
        "first stage-2 epoch (counted from 1) in which the loss trains (CCAFL, Eq. 20: E_intra "
        "+ 1, after the intra-camera epochs)",
        minimum=1,
        flag="--contrastive-first-epoch",
    )


class ClusterContrastLoss(LossTerm):
    """Eq. 3 / Eq. 6 against a cluster memory rebuilt every epoch and moved after every step
    (Eq. 1-2). With ``weighted``, the loss is Eq. 6 from epoch ``weights_from_epoch`` on,
    averaged as ``normalisation`` says (:func:`weighted_contrastive_loss`), and Eq. 3 before."""

    name = "contrastive"
    options = ContrastiveOptions

    def __init__(
        self,
        momentum: float,
        temperature: float,
        weighted: bool,
        update: str = "sample",
        *,
        weights_from_epoch: int = 1,
        normalisation: str = "batch",
        first_epoch: int = 1,
    ) -> None:
        super().__init__()
        self.momentum, self.temperature, self.weighted = momentum, temperature, weighted
        self.update = update
        self.weights_from_epoch, self.normalisation = weights_from_epoch, normalisation
        self.first_epoch = first_epoch
        self.memory: ClusterMemory | None = None
        self.epoch = 0

    @classmethod
    def build(cls, options: ContrastiveOptions, context: LossContext):
        if not options.enabled:
            return None
        return cls(
            context.momentum,
            context.temperature,
            options.cluster_weights,
            context.memory_update,
            weights_from_epoch=options.weights_from_epoch,
            normalisation=options.normalisation,
            first_epoch=options.first_epoch,
        )

    def start_epoch(self, epoch: int, features: torch.Tensor, targets: EpochTargets) -> None:
        self.epoch = epoch
        self.memory = ClusterMemory.from_features(
            features, targets.labels, self.momentum, self.temperature, self.update
        )

    def forward(self, batch: Batch) -> torch.Tensor:
        weighted = self.weighted and self.epoch + 1 >= self.weights_from_epoch
        weights = batch.weights if weighted else None
        logits = self.memory.logits(batch.features)
        return weighted_contrastive_loss(logits, batch.labels, weights, self.normalisation)

    def after_step(self, batch: Batch) -> None:
        self.memory.update(batch.features, batch.labels)


@dataclass(frozen=True)
class CameraLossOptions:
    """The camera classifier behind a gradient reversal layer (Eq. 7-9)."""

    enabled: bool = setting(True, "train with the camera classifier", flag="--camera-loss")
    beta: float = setting(1.0, "weight beta of the camera loss in the total (Eq. 9)", minimum=0)
    grl_lambda: float = setting(
        1.0,
        "gradient reversal coefficient lambda (Eq. 7; the paper: 1). From random weights a "
        "smaller value keeps the encoder from outpacing the classifier",
        minimum=0,
    )
    last_epoch: int | None = setting(
        None,
        "last stage-2 epoch (counted from 1) trained with the camera loss; null = every epoch "
        "(the paper); the released code: 3 (its epochs 0-2)",
        minimum=1,
        flag="--camera-last-epoch",
    )
    classifier: str = setting(
        "mlp",
        "the camera classifier's layers: mlp = Linear(D, 256), BatchNorm, ReLU, Linear(256, C) "
        "(the paper gives none); release = the released code's three layers with dropout, its "
        "cross-entropy taken on the softmax of their log-softmax output",
        choices=CAMERA_HEADS,
        flag="--camera-classifier",
    )


class CameraTargetTerm(LossTerm):
    """A term that classifies each image's camera: the camera index (0..C-1, the position of
    its camid among the training cameras) of every position, set at the start of each epoch;
    the cameras are saved with the term and checked when a checkpoint carries it on."""

    def __init__(self, camera_ids: Sequence[int]) -> None:
        super().__init__()
        self.camera_ids = tuple(int(c) for c in camera_ids)
        self.camera_index: torch.Tensor | None = None

    def start_epoch(self, epoch: int, features: torch.Tensor, targets: EpochTargets) -> None:
        index = camera_positions(targets.cameras.cpu().numpy(), self.camera_ids)
        self.camera_index = torch.as_tensor(index, device=targets.cameras.device)

    def get_extra_state(self) -> dict:
        return {"camera_ids": list(self.camera_ids)}

    def set_extra_state(self, state: dict) -> None:
        if list(state["camera_ids"]) != list(self.camera_ids):
            raise PipelineError(
                f"--init's {self.name} classifier knows cameras {list(state['camera_ids'])} but "
                f"the index's training split has {list(self.camera_ids)}; start from "
                "init-model's checkpoint for a new dataset"
            )


class CameraAdversarialLoss(CameraTargetTerm):
    """Eq. 8: cross-entropy of the camera classifier D on R_lambda(f(x)), weighted by beta, in
    the epochs up to ``last_epoch`` (None: all)."""

    name = "camera"
    options = CameraLossOptions

    def __init__(
        self,
        feature_dim: int,
        camera_ids: Sequence[int],
        beta: float,
        grl_lambda: float,
        *,
        last_epoch: int | None = None,
        head: str = "mlp",
    ):
        super().__init__(camera_ids)
        self.weight = beta
        self.last_epoch = last_epoch
        self.classifier = CameraClassifier(feature_dim, len(self.camera_ids), grl_lambda, head)

    @classmethod
    def build(cls, options: CameraLossOptions, context: LossContext):
        if not options.enabled:
            return None
        return cls(
            context.feature_dim,
            context.camera_ids,
            options.beta,
            options.grl_lambda,
            last_epoch=options.last_epoch,
            head=options.classifier,
        )

    def forward(self, batch: Batch) -> torch.Tensor:
        return camera_domain_loss(
            self.classifier(batch.features), self.camera_index[batch.positions]
        )


def camera_positions(cameras: np.ndarray, camera_ids: Sequence[int]) -> np.ndarray:
    """Position of each camid in ``camera_ids`` (the classifier's classes)."""
    import pandas as pd

    index = pd.Index(camera_ids).get_indexer(cameras)
    unknown = index < 0
    if unknown.any():
        raise PipelineError(
            f"camera(s) {sorted(set(np.asarray(cameras)[unknown].tolist()))} are not among the "
            f"classifier's cameras {list(camera_ids)}"
        )
    return index
