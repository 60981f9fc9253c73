"""CA-UReID on hand-built cases: the camera style separation (Eq. 3, 5), the instance memory
(Eq. 1), L_base, L_sep (Eq. 4) and the camera-aware contrastive centre loss (Eq. 6-7)."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.models import build_model
from pipeline.models.checkpoint import model_from_checkpoint
from pipeline.models.css import CameraStyleSeparation, separate
from pipeline.train.ca_ureid import (
    CameraCentreContrastLoss,
    CameraSeparationLoss,
    InstanceMemoryLoss,
    camera_centre_contrastive_loss,
    camera_centres,
    instance_memory_loss,
    momentum_update,
)
from pipeline.train.losses import Batch, EpochTargets, LossContext
from pipeline.train.terms import LOSSES, build_terms


def test_camera_agnostic_plus_camera_specific_map_is_the_map_eq3_eq5():
    torch.manual_seed(0)
    features = torch.randn(2, 32, 4, 2)
    mask = torch.rand(2, 32, 4, 2)
    specific, agnostic = separate(features, mask)
    assert torch.equal(specific, mask * features)
    assert torch.equal(agnostic, (1 - mask) * features)
    assert torch.allclose(specific + agnostic, features, atol=1e-6)
    module = CameraStyleSeparation(32).train()
    agnostic, specific = module(features)
    assert torch.allclose(agnostic + specific, features, atol=1e-6)
    attention = module.attention(features)
    assert attention.shape == features.shape  # spatial x channel: one weight per position
    assert ((attention > 0) & (attention < 1)).all()
    # the mask varies over positions (spatial part) and over channels (channel part)
    assert attention[0, 0].std() > 0 and attention[0, :, 0, 0].std() > 0


def test_css_model_embeds_the_agnostic_map_and_returns_the_specific_embedding_in_training():
    torch.manual_seed(0)
    model = build_model("resnet18", css=True)
    assert model.config["css"] is True and "css" not in build_model("resnet18").config
    images = torch.randn(4, 3, 32, 16)
    model.train()
    embeddings, outputs = model(images, with_outputs=True)
    assert embeddings.shape == (4, 512) and outputs["camera_specific"].shape == (4, 512)
    model.eval()
    with torch.no_grad():
        plain = model(images)
        body = model.body(images)
        agnostic, _ = model.css(body)
        by_hand = torch.nn.functional.normalize(model.neck(agnostic.mean(dim=(2, 3))), dim=1)
    assert torch.allclose(plain, by_hand, atol=1e-5)
    rebuilt = model_from_checkpoint({"model_config": model.config, "model": model.state_dict()})
    assert rebuilt.css is not None
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(images), plain)


def test_instance_memory_moves_each_row_by_eq1_and_stays_unit_length():
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    momentum_update(memory, torch.tensor([0, 2]), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), 0.2)
    expected = torch.nn.functional.normalize(torch.tensor([0.2, 0.8]), dim=0)
    assert torch.allclose(memory[0], expected)
    assert torch.equal(memory[1], torch.tensor([0.0, 1.0]))  # not in the batch
    assert torch.allclose(memory[2], torch.tensor([1.0, 0.0]))


def test_base_loss_compares_with_the_mean_memory_row_of_each_cluster():
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    memory_labels = torch.tensor([0, 0, 1])
    # centres (0.5, 0.5) and (-1, 0); f = (1, 0), tau 0.5: logits 1 and -2
    loss = instance_memory_loss(
        torch.tensor([[1.0, 0.0]]), torch.tensor([0]), memory, memory_labels, 2, 0.5
    )
    assert loss.item() == pytest.approx(-1 + math.log(math.exp(1) + math.exp(-2)), rel=1e-6)


# the memory: identity 0 in cameras 0 and 1, identity 1 in cameras 0 and 1 (two rows in camera
# 1, whose centre is their mean); the batch: two images of identity 0 in camera 0
MEMORY = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [0.0, -1.0]])
MEMORY_IDS = torch.tensor([0, 0, 1, 1, 1])
MEMORY_CAMERAS = torch.tensor([0, 1, 0, 1, 1])
BATCH = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # anchor p = (0.8, 0.4)


def cacc_by_hand(tau: float, negatives: list[float]) -> float:
    """Eq. 7 for the anchor p = (0.8, 0.4): positives p.g = 0.8 (camera 0), 0.4 (camera 1)."""
    neg = sum(math.exp(s / tau) for s in negatives)
    terms = [math.log(math.exp(s / tau) / (math.exp(s / tau) + neg)) for s in (0.8, 0.4)]
    return -sum(terms) / 2


@pytest.mark.parametrize(
    ("j", "negatives"),
    [(1, [-0.4]), (2, [-0.4, -0.8]), (50, [-0.4, -0.8])],  # the J nearest: p.g = -0.4 first
)
def test_cacc_value_by_hand_eq6_eq7(j, negatives):
    centres, centre_ids = camera_centres(MEMORY, MEMORY_IDS, MEMORY_CAMERAS, 2)
    assert torch.equal(centre_ids, torch.tensor([0, 0, 1, 1]))
    assert torch.allclose(centres, MEMORY[:4])
    anchors, anchor_ids = camera_centres(BATCH, torch.tensor([0, 0]), torch.tensor([0, 0]), 2)
    assert torch.allclose(anchors, torch.tensor([[0.8, 0.4]])) and anchor_ids.tolist() == [0]
    loss = camera_centre_contrastive_loss(anchors, anchor_ids, centres, centre_ids, j, 0.5)
    assert loss.item() == pytest.approx(cacc_by_hand(0.5, negatives), rel=1e-5)


def context(**local) -> LossContext:
    return LossContext(feature_dim=2, camera_ids=(0, 1), momentum=0.2, temperature=0.5, **local)


def test_cacc_term_takes_its_centres_from_the_instance_memory():
    options = {name: LOSSES[name].options(enabled=True) for name in ("instance", "contrastive")}
    options["cacc"] = LOSSES["cacc"].options(enabled=True, temperature=0.5)
    terms = build_terms(options, context())
    assert list(terms) == ["contrastive", "instance", "cacc"]  # registry order
    targets = EpochTargets(labels=MEMORY_IDS, cameras=MEMORY_CAMERAS + 3)  # camids 3 and 4
    for term in terms.values():
        term.start_epoch(0, MEMORY, targets)
    batch = Batch(BATCH, torch.tensor([0, 0]), targets)
    expected = cacc_by_hand(0.5, [-0.4, -0.8])
    assert terms["cacc"](batch).item() == pytest.approx(expected, rel=1e-5)
    # after the step the memory has moved, and so have the centres
    terms["instance"].after_step(Batch(torch.tensor([[0.0, 1.0]]), torch.tensor([0]), targets))
    assert terms["cacc"](batch).item() != pytest.approx(expected, rel=1e-5)


def test_cacc_without_the_instance_memory_is_refused():
    with pytest.raises(PipelineError, match="instance memory bank: enable"):
        build_terms({"cacc": LOSSES["cacc"].options(enabled=True)}, context())


def test_separation_loss_trains_the_mask_and_needs_the_css_module():
    torch.manual_seed(0)
    term = CameraSeparationLoss(feature_dim=8, camera_ids=(1, 5), weight=0.4)
    targets = EpochTargets(labels=torch.tensor([0, 1]), cameras=torch.tensor([5, 1]))
    term.start_epoch(0, torch.zeros(2, 8), targets)
    module = CameraStyleSeparation(8).train()
    _, specific = module(torch.randn(2, 8, 4, 2))
    outputs = {"camera_specific": module.specific_embedding(specific)}
    batch = Batch(torch.zeros(2, 8), torch.tensor([0, 1]), targets, outputs)
    loss = term(batch)
    logits = term.classifier(outputs["camera_specific"])
    assert loss.item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, torch.tensor([1, 0])).item()
    )
    loss.backward()
    assert module.attention.fuse[0].weight.grad.abs().sum() > 0
    with pytest.raises(PipelineError, match="--css"):
        term(Batch(torch.zeros(2, 8), torch.tensor([0, 1]), targets))


def test_instance_term_rebuilds_its_memory_each_epoch():
    term = InstanceMemoryLoss(momentum=0.2, temperature=0.5)
    targets = EpochTargets(labels=torch.tensor([0, 1]), cameras=torch.tensor([0, 1]))
    term.start_epoch(0, torch.tensor([[2.0, 0.0], [0.0, 3.0]]), targets)
    assert torch.allclose(term.memory, torch.eye(2))
    assert CameraCentreContrastLoss(1.0, 50, 0.07).weight == 1.0
