"""One training epoch on a tiny model: the memory and weights move; a non-finite loss stops it
cleanly, with neither its step nor a later one applied."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError
from pipeline.train.loop import build_optimizer, train_epoch
from pipeline.train.losses import CameraAdversarialLoss, ClusterContrastLoss, EpochTargets
from pipeline.train.memory import ClusterMemory


class TinyEncoder(nn.Module):
    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 4 * 2, 8)
        self.scale = scale

    def forward(self, images: torch.Tensor, with_outputs: bool = False):
        embeddings = F.normalize(self.linear(images.flatten(1)) * self.scale, dim=1)
        return (embeddings, {}) if with_outputs else embeddings


def batches(n_batches: int = 3) -> list:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_batches * 4, 3, 4, 2), dtype=torch.uint8, generator=generator)
    return [(images[i * 4 : (i + 1) * 4], torch.arange(i * 4, i * 4 + 4)) for i in range(n_batches)]


def setup(scale: float = 1.0, beta: float = 1.0):
    torch.manual_seed(0)
    model = TinyEncoder(scale)
    labels = torch.tensor([0, 0, 1, 1] * 3)
    contrastive = ClusterContrastLoss(momentum=0.2, temperature=0.1, weighted=False)
    camera = CameraAdversarialLoss(8, (0, 1), beta=beta, grl_lambda=1.0)
    targets = EpochTargets(labels=labels, cameras=torch.tensor([0, 1] * 6))
    camera.start_epoch(0, torch.zeros(12, 8), targets)
    contrastive.memory = ClusterMemory(
        F.normalize(torch.randn(2, 8), dim=1), momentum=0.2, temperature=0.1
    )
    optimizer = build_optimizer(
        list(model.parameters()) + list(camera.parameters()), lr=0.01, weight_decay=0.0
    )
    losses = {"contrastive": contrastive, "camera": camera}
    return model, contrastive.memory, losses, optimizer, targets


def test_epoch_trains_both_losses_and_updates_the_memory():
    model, memory, terms, optimizer, targets = setup(beta=0.5)
    before = model.linear.weight.detach().clone()
    memory_before = memory.features.clone()
    losses = train_epoch(
        model,
        terms,
        batches(),
        optimizer,
        targets,
        device=torch.device("cpu"),
        progress=False,
    )
    assert losses["loss_total"] == pytest.approx(
        losses["loss_contrastive"] + 0.5 * losses["loss_camera"]
    )
    assert losses["loss_camera"] > 0
    assert not torch.equal(model.linear.weight, before)
    assert not torch.allclose(memory.features, memory_before)
    assert torch.allclose(memory.features.norm(dim=1), torch.ones(2))


def test_non_finite_loss_stops_with_epoch_and_iteration_before_any_step():
    model, memory, terms, optimizer, targets = setup(scale=float("nan"))
    before = model.linear.weight.detach().clone()
    with pytest.raises(PipelineError, match=r"epoch 3, iteration 1: loss is not finite"):
        train_epoch(
            model,
            terms,
            batches(),
            optimizer,
            targets,
            device=torch.device("cpu"),
            epoch=2,
            progress=False,
        )
    assert torch.equal(model.linear.weight, before)


def test_a_later_non_finite_loss_keeps_the_weights_of_the_steps_before_it():
    expected, _, expected_terms, expected_optimizer, targets = setup()
    expected_terms["contrastive"].weighted = True
    targets.weights = torch.ones(12)
    train_epoch(
        expected,
        expected_terms,
        batches()[:1],
        expected_optimizer,
        targets,
        device=torch.device("cpu"),
        progress=False,
    )
    model, _, terms, optimizer, targets = setup()
    terms["contrastive"].weighted = True
    targets.weights = torch.tensor([1.0] * 4 + [float("nan")] * 4 + [1.0] * 4)  # batch 2
    with pytest.raises(PipelineError, match=r"epoch 1, iteration 2: .*\(loss_contrastive nan"):
        train_epoch(
            model, terms, batches(), optimizer, targets, device=torch.device("cpu"), progress=False
        )
    # the step of batch 1 only: neither batch 2's nor the finite batch 3's
    assert torch.equal(model.linear.weight, expected.linear.weight)
    classifier, expected_classifier = (t["camera"].classifier for t in (terms, expected_terms))
    assert torch.equal(classifier.mlp[0].weight, expected_classifier.mlp[0].weight)


def test_the_cpu_optimizer_is_torchs_plain_adam_to_the_last_bit():
    """On the CPU the fused Adam kernel rounds differently; training there keeps the results of
    torch's per-parameter Adam (the pipeline's before the GPU path)."""
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(64, 33, generator=generator)
    gradients = [torch.randn(64, 33, generator=generator) for _ in range(4)]
    weights = {}
    for name in ("pipeline", "plain", "fused"):
        parameter = nn.Parameter(start.clone())
        if name == "pipeline":
            optimizer = build_optimizer([parameter], lr=3.5e-4, weight_decay=5e-4)
        else:
            optimizer = torch.optim.Adam(
                [parameter], lr=3.5e-4, weight_decay=5e-4, fused=name == "fused"
            )
        for gradient in gradients:
            parameter.grad = gradient.clone()
            optimizer.step()
        weights[name] = parameter.detach()
    assert not build_optimizer([nn.Parameter(start)], 0.1, 0.0).defaults["fused"]
    assert torch.equal(weights["pipeline"], weights["plain"])
    assert not torch.equal(weights["fused"], weights["plain"])  # what the test guards against
