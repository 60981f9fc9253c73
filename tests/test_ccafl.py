"""CCAFL on hand-built cases: the ICS labels carry no cross-camera link, the association graph
of Eq. 12, ICDL (Eq. 7-8, 10), L_GID (Eq. 17), ICAL with a known q(g) (Eq. 18-19), and the
schedule of Eq. 20."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.cluster.association import (
    associate,
    association_edges,
    camera_identities,
    identity_centroids,
    same_camera_merges,
)
from pipeline.data.ics import ics_local_labels
from pipeline.errors import PipelineError
from pipeline.train.ccafl import (
    hardest_instances,
    ical_loss,
    ical_weights,
    intra_camera_centroid_loss,
    intra_camera_hard_loss,
)
from pipeline.train.losses import Batch, EpochTargets, LocalIdentities, LossContext
from pipeline.train.terms import LOSSES, build_terms


# ---------------------------------------------------------------- ICS labels
def test_ics_labels_are_each_cameras_identities_and_carry_no_cross_camera_link():
    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(30), 6)  # 30 persons, each 3 images in each of 2 cameras
    cameras = np.tile([1, 1, 1, 2, 2, 2], 30)
    order = rng.permutation(len(pids))
    pids, cameras = pids[order], cameras[order]
    labels = ics_local_labels(cameras, pids, seed=4)
    for camera in (1, 2):
        rows = cameras == camera
        # within a camera: the identity partition, numbered 0..N_c-1
        pairs = np.unique(np.stack([pids[rows], labels[rows]]), axis=1)
        assert pairs.shape[1] == 30 and sorted(labels[rows].tolist())[-1] == 29
        assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == 30
    # re-pair camera 2's persons with camera 1's at random: the same images hold the same
    # persons within each camera, only the cross-camera link changes, and the labels do not
    relinked = pids.copy()
    in_two = cameras == 2
    relinked[in_two] = rng.permutation(1000)[pids[in_two]]
    assert np.array_equal(ics_local_labels(cameras, relinked, seed=4), labels)
    # and equal numbers in two cameras are not the same person beyond chance
    first = {lab: pid for lab, pid in zip(labels[cameras == 1], pids[cameras == 1], strict=True)}
    second = {lab: pid for lab, pid in zip(labels[in_two], pids[in_two], strict=True)}
    assert sum(first[k] == second[k] for k in first) <= 3


def test_ics_labels_change_with_the_seed_per_camera():
    cameras = np.array([0, 0, 1, 1, 0, 1])
    pids = np.array([5, 6, 5, 6, 7, 7])
    assert not np.array_equal(
        ics_local_labels(cameras, pids, 0), ics_local_labels(cameras, pids, 1)
    )


# ---------------------------------------------------------------- association, Eq. 12
def unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


# identities at angles, in three cameras (see the test for the mutual nearest neighbours)
ANGLES = {"a0": (0, 0), "b0": (0, 90), "a1": (1, 10), "b1": (1, 180), "a2": (2, 80), "c2": (2, 200)}


def association_case():
    """Two images per identity (one local label per identity and camera)."""
    names = list(ANGLES)
    cameras = np.array([ANGLES[n][0] for n in names for _ in range(2)])
    local = np.array([i for i in range(len(names)) for _ in range(2)])
    features = np.array([unit(ANGLES[n][1] + d) for n in names for d in (-1, 1)])
    return names, features, cameras, local


def test_association_graph_has_the_mutual_nearest_edges_below_t():
    # mutual nearest across cameras: a0-a1 (10 deg apart), b0-a2 (10), b1-c2 (20), a1-a2 (70);
    # not a0-a2 (a2's nearest in camera 0 is b0), not b0-a1 (a1's is a0)
    names, features, cameras, local = association_case()
    ids, id_cameras = camera_identities(cameras, local)
    centroids = identity_centroids(features, ids, len(id_cameras))
    assert np.allclose(centroids, [unit(ANGLES[n][1]) for n in names])
    i, j = association_edges(centroids, id_cameras, threshold=1.7)
    edges = {tuple(sorted((names[a], names[b]))) for a, b in zip(i, j, strict=True)}
    assert edges == {("a0", "a1"), ("a2", "b0"), ("b1", "c2"), ("a1", "a2")}
    # d(a1, a2) = 2 sin(35 deg) = 1.15: below 1.7, above 1.0
    i, j = association_edges(centroids, id_cameras, threshold=1.0)
    assert len(i) == 3


@pytest.mark.parametrize(
    ("threshold", "components"),
    [
        (1.7, [{"a0", "a1", "a2", "b0"}, {"b1", "c2"}]),
        (1.0, [{"a0", "a1"}, {"a2", "b0"}, {"b1", "c2"}]),
        (0.1, [{name} for name in ANGLES]),
    ],
)
def test_association_labels_are_the_connected_components(threshold, components):
    names, features, cameras, local = association_case()
    labels = associate(features, cameras, local, threshold)
    found = {}
    for name, label in zip(np.repeat(names, 2), labels, strict=True):
        found.setdefault(int(label), set()).add(str(name))
    assert sorted(map(sorted, found.values())) == sorted(map(sorted, components))
    assert sorted(set(labels.tolist())) == list(range(len(components)))
    # at T 1.7 the chain b0-a2-a1-a0 joins two identities of camera 0
    assert same_camera_merges(labels, cameras, local) == (1 if threshold == 1.7 else 0)


# ---------------------------------------------------------------- ICDL, Eq. 7-8, 10
# identities 0, 1 in camera 0 and 2 in camera 1; memory rows (instances) by identity
MEMORY = torch.tensor(
    [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6], [-1.0, 0.0]], dtype=torch.float32
)
MEMORY_IDS = torch.tensor([0, 0, 1, 1, 2])
ID_CAMERAS = torch.tensor([0, 0, 1])


def test_intra_camera_centroid_loss_is_a_softmax_over_the_own_cameras_identities_eq7():
    features = torch.tensor([[1.0, 0.0]])
    centroids = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # identity 2 equals 0
    same_camera = torch.tensor([[True, True, False]])
    loss = intra_camera_centroid_loss(features, torch.tensor([0]), centroids, same_camera, 0.5)
    assert loss.item() == pytest.approx(-2 + math.log(math.exp(2) + 1), rel=1e-6)


def test_hardest_instances_are_the_least_similar_positive_and_most_similar_negatives_eq8():
    features = torch.tensor([[1.0, 0.0]])  # similarities to the rows: 1, .6, 0, .8, -1
    hardest = hardest_instances(features @ MEMORY.T, MEMORY_IDS, torch.tensor([0]), 3)
    assert torch.allclose(hardest, torch.tensor([[0.6, 0.8, -1.0]]))
    same_camera = torch.tensor([[True, True, False]])
    loss = intra_camera_hard_loss(features, torch.tensor([0]), MEMORY, MEMORY_IDS, same_camera, 0.5)
    assert loss.item() == pytest.approx(-1.2 + math.log(math.exp(1.2) + math.exp(1.6)), rel=1e-6)


def local_context(ids, cameras, **values) -> LossContext:
    local = LocalIdentities(ids=np.asarray(ids), cameras=np.asarray(cameras))
    defaults = {"feature_dim": 2, "camera_ids": (0, 1), "momentum": 0.1, "temperature": 0.5}
    return LossContext(**(defaults | values), local_identities=local)


def test_icdl_term_is_lambda_centroid_plus_one_minus_lambda_hard_eq10():
    context = local_context(MEMORY_IDS.numpy(), ID_CAMERAS.numpy())
    options = {"icdl": LOSSES["icdl"].options(enabled=True, balance=0.8)}
    term = build_terms(options, context)["icdl"]
    targets = EpochTargets(
        labels=torch.zeros(5, dtype=torch.int64), cameras=torch.tensor([0] * 4 + [1])
    )
    term.start_epoch(0, MEMORY, targets)
    batch = Batch(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), targets)
    # centroids: identity 0 (1.6, 0.8)/|.|, identity 1 (0.8, 1.6)/|.|: cos 0.894 and 0.447
    c0, c1 = 1.6 / math.hypot(1.6, 0.8), 0.8 / math.hypot(1.6, 0.8)
    first = -c0 / 0.5 + math.log(math.exp(c0 / 0.5) + math.exp(c1 / 0.5))
    second = -1.2 + math.log(math.exp(1.2) + math.exp(1.6))
    assert term(batch).item() == pytest.approx(0.8 * first + 0.2 * second, rel=1e-5)
    term.after_step(Batch(torch.tensor([[0.0, 1.0]]), torch.tensor([0]), targets))
    assert torch.equal(term.instances[0], torch.tensor([0.0, 1.0]))  # Eq. 5: replaced


def test_icdl_without_local_labels_is_refused():
    context = LossContext(feature_dim=2, camera_ids=(0, 1), momentum=0.1, temperature=0.5)
    with pytest.raises(PipelineError, match="--local-labels"):
        build_terms({"icdl": LOSSES["icdl"].options(enabled=True)}, context)


# ---------------------------------------------------------------- L_GID and ICAL
def test_ical_with_a_known_q_eq18_eq19():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    positive = torch.tensor([[True, False, True, False]])  # own identity 0, associated 2
    weights = ical_weights(torch.tensor([0]), positive, epsilon=0.8)
    assert torch.allclose(weights, torch.tensor([[0.6, 0.0, 0.4, 0.0]]))  # 1 - e + e/2, e/2
    negatives = math.exp(1.0) + math.exp(-1.0)
    expected = -(
        0.6 * math.log(math.exp(2) / (math.exp(2) + negatives))
        + 0.4 * math.log(math.exp(0.5) / (math.exp(0.5) + negatives))
    )
    loss = ical_loss(logits, torch.tensor([0]), positive, epsilon=0.8)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # one positive (no association): q is one-hot, the loss the cross-entropy
    alone = torch.tensor([[True, False, False, False]])
    assert ical_loss(logits, torch.tensor([0]), alone, 0.8).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, torch.tensor([0])).item(), rel=1e-6
    )


def ccafl_terms():
    torch.manual_seed(0)
    # four identities: 0, 1 in camera 0, 2, 3 in camera 1; pseudo labels join 0 with 2
    ids = np.array([0, 0, 1, 2, 3])
    context = local_context(ids, [0, 0, 1, 1], temperature=0.5)
    options = {
        "gid": LOSSES["gid"].options(enabled=True, temperature=0.5),
        "ical": LOSSES["ical"].options(enabled=True, epsilon=0.8, first_epoch=3),
    }
    terms = build_terms(options, context)
    features = torch.nn.functional.normalize(torch.randn(5, 2), dim=1)
    targets = EpochTargets(
        labels=torch.tensor([0, 0, 1, 0, 2]), cameras=torch.tensor([0, 0, 0, 1, 1])
    )
    for term in terms.values():
        term.start_epoch(0, features, targets)
    return terms, features, targets


def test_gid_moves_only_the_classifier_and_ical_only_the_encoder():
    terms, features, targets = ccafl_terms()
    gid, ical = terms["gid"], terms["ical"]
    # the classifier starts at each identity's mean embedding
    assert torch.allclose(gid.weights[0], torch.nn.functional.normalize(features[:2].sum(0), dim=0))
    embedded = features.clone().requires_grad_()
    batch = Batch(embedded, torch.arange(5), targets)
    gid(batch).backward()
    assert embedded.grad is None and gid.weights.grad.abs().sum() > 0
    gid.weights.grad = None
    loss = ical(batch)
    loss.backward()
    assert gid.weights.grad is None and embedded.grad.abs().sum() > 0
    # image 0: identity 0, pseudo label 0 holds identities 0 and 2
    assert ical.members[0].tolist() == [True, False, True, False]


def test_schedule_of_eq20_sets_each_terms_epochs():
    terms, _, _ = ccafl_terms()
    local = terms["gid"]
    context = local_context(local.ids.numpy(), local.id_cameras.numpy())
    options = {
        "contrastive": LOSSES["contrastive"].options(first_epoch=3),
        "icdl": LOSSES["icdl"].options(enabled=True, last_epoch=2),
        "gid": LOSSES["gid"].options(enabled=True),
        "ical": LOSSES["ical"].options(enabled=True, first_epoch=4),
    }
    built = build_terms(options, context)
    active = [[name for name, term in built.items() if term.active(e)] for e in range(5)]
    assert active == [
        ["icdl", "gid"],
        ["icdl", "gid"],
        ["contrastive", "gid"],
        ["contrastive", "gid", "ical"],
        ["contrastive", "gid", "ical"],
    ]


def test_ical_without_the_classifier_is_refused():
    context = local_context([0, 1], [0, 1])
    with pytest.raises(PipelineError, match="--gid-loss"):
        build_terms({"ical": LOSSES["ical"].options(enabled=True)}, context)
