"""Label refinement (Eq. 5) on a hand-built case with known kept and discarded members, under
each reading of several pivots in one (cluster, camera)."""

import numpy as np
import pytest

from pipeline.cluster.refine import PIVOT_RULES, refine_epoch, refine_labels, vouching_pivots

# row: cluster, camera, local label, pivot
#  0-4   cluster 0, camera 1: pivots 0 (local 0) and 3 (local 2) disagree -> 0, 1, 3 kept,
#        2 and 4 vouched for by no pivot
#  5-6   cluster 0, camera 2: no pivot in this camera -> unchanged
#  7-8   cluster 1: no pivot at all -> unchanged
#  9-11  cluster 2, camera 2: pivot 9 (local 5) -> 10 kept, 11 (local 6) a candidate
#  12    cluster 3, camera 1, pivot with local 4
#  13-14 cluster 3, camera 2: pivot 14 (local 7); 13 has local label 4 *of camera 2*, which is
#        not the local cluster of pivot 12 (camera 1) -> candidate
#  15    outlier flagged as pivot -> ignored, stays -1
CLUSTERS = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3, -1])
CAMIDS = np.array([1, 1, 1, 1, 1, 2, 2, 1, 1, 2, 2, 2, 1, 2, 2, 1])
LOCAL = np.array([0, 0, 1, 2, 3, 0, 1, 1, 3, 5, 5, 6, 4, 4, 7, 9])
PIVOT = np.array([1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1, 1], dtype=bool)


def refine(p, mode="paper", seed=0, **rule):
    rng = np.random.default_rng(seed)
    return refine_labels(CLUSTERS, CAMIDS, LOCAL, PIVOT, p, rng, mode, **rule)


def test_paper_mode_discards_exactly_the_unvouched_members():
    labels, discarded = refine(1.0)
    np.testing.assert_array_equal(np.flatnonzero(discarded), [2, 4, 11, 13])
    expected = CLUSTERS.copy()
    expected[[2, 4, 11, 13]] = -1
    np.testing.assert_array_equal(labels, expected)


def test_reference_mode_uses_the_last_pivot_of_each_cluster_and_its_camera_only():
    # cluster 0: last pivot is row 3 (local 2) -> rows 0, 1, 2, 4 of camera 1 go
    # cluster 3: last pivot is row 14 (camera 2, local 7) -> row 13 goes, row 12 (camera 1) stays
    _, discarded = refine(1.0, mode="reference")
    np.testing.assert_array_equal(np.flatnonzero(discarded), [0, 1, 2, 4, 11, 13])


def test_each_pivot_in_turn_discards_the_whole_camera_where_pivots_disagree():
    # pivots 0 and 3 of cluster 0, camera 1 discard each other and everything else there
    _, discarded = refine(1.0, pivot_rule="each")
    np.testing.assert_array_equal(np.flatnonzero(discarded), [0, 1, 2, 3, 4, 11, 13])


@pytest.mark.parametrize(
    ("best", "expected"),
    [(0, [2, 3, 4, 11, 13]), (3, [0, 1, 2, 4, 11, 13])],
)
def test_best_pivot_of_each_camera_decides(best, expected):
    scores = np.ones(len(CLUSTERS))
    scores[best] = 2.0  # row 0 (local 0) or row 3 (local 2) outscores the other pivot
    _, discarded = refine(1.0, pivot_rule="best", scores=scores)
    np.testing.assert_array_equal(np.flatnonzero(discarded), expected)
    chosen = vouching_pivots(CLUSTERS, CAMIDS, PIVOT, pivot_rule="best", scores=scores)
    np.testing.assert_array_equal(np.flatnonzero(chosen), sorted({best, 9, 12, 14}))


def test_reference_mode_keeps_the_release_pivot_whatever_the_rule():
    for rule in PIVOT_RULES:
        _, discarded = refine(1.0, mode="reference", pivot_rule=rule, scores=np.ones(16))
        np.testing.assert_array_equal(np.flatnonzero(discarded), [0, 1, 2, 4, 11, 13])
    np.testing.assert_array_equal(
        np.flatnonzero(vouching_pivots(CLUSTERS, CAMIDS, PIVOT, "reference")), [3, 9, 14]
    )


def test_rules_are_nested_any_best_each():
    # one pivot vouches for a subset of what several do; "each" adds the split cameras
    rng = np.random.default_rng(3)
    n = 3000
    clusters, camids, local = rng.integers(0, 40, n), rng.integers(1, 4, n), rng.integers(0, 9, n)
    pivots, scores = rng.random(n) < 0.1, rng.random(n)
    found = {
        rule: refine_labels(
            clusters, camids, local, pivots, 1.0, rng, pivot_rule=rule, scores=scores
        )[1]
        for rule in PIVOT_RULES
    }
    assert found["any"].sum() < found["best"].sum() < found["each"].sum()
    assert not (found["any"] & ~found["best"]).any()
    assert not (found["best"] & ~found["each"]).any()


def test_unknown_rule_and_best_without_scores_are_errors():
    with pytest.raises(ValueError, match="pivot_rule must be one of"):
        refine(1.0, pivot_rule="all")
    with pytest.raises(ValueError, match="needs the pivot scores"):
        refine(1.0, pivot_rule="best")


def test_reference_epoch_scores_one_neighbour_fewer_and_takes_the_first_columns():
    # the release's k counts the image itself: pivot_k 3 scores 2 neighbours; wider lists are
    # cut to their first columns, narrower ones are an error
    x = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    args = (x, np.zeros(4, int), np.ones(4, int), np.arange(4), 1.0, np.random.default_rng(0))
    searched = refine_epoch(*args, mode="reference", pivot_k=3)
    sims = np.array([[0.6, 0.0, -1.0]] * 4, dtype=np.float32)
    given = refine_epoch(*args, mode="reference", pivot_k=3, similarities=sims)
    assert given.mean_distance == pytest.approx((0.4 + 1.0) * 4 / 12)
    assert searched.mean_distance == pytest.approx(5.8 / 12)
    with pytest.raises(ValueError, match="scores 2 neighbours per image, the given lists hold 1"):
        refine_epoch(*args, mode="reference", pivot_k=3, similarities=sims[:, :1])


def test_probability_zero_changes_nothing():
    labels, discarded = refine(0.0)
    assert not discarded.any()
    np.testing.assert_array_equal(labels, CLUSTERS)


def test_partial_probability_is_seeded_and_only_touches_candidates():
    rng = np.random.default_rng(5)
    n = 20000
    clusters = rng.integers(0, 50, n)
    camids = rng.integers(1, 4, n)
    local = rng.integers(0, 30, n)
    pivots = rng.random(n) < 0.05
    run = [
        refine_labels(clusters, camids, local, pivots, 0.3, np.random.default_rng(s))
        for s in (1, 1, 2)
    ]
    np.testing.assert_array_equal(run[0][1], run[1][1])
    assert not np.array_equal(run[0][1], run[2][1])
    _, candidates = refine_labels(clusters, camids, local, pivots, 1.0, np.random.default_rng(1))
    assert not (run[0][1] & ~candidates).any()
    assert run[0][1].sum() / candidates.sum() == pytest.approx(0.3, abs=0.02)


def test_refinement_never_adds_a_sample_to_a_cluster_and_renumbers():
    clusters = np.array([0, 0, 2, 2, 5, 5, -1])
    camids = np.array([1, 1, 1, 1, 1, 1, 1])
    local = np.array([0, 1, 0, 1, 2, 2, 0])
    pivots = np.array([True, False, False, False, False, False, False])
    labels, discarded = refine_labels(clusters, camids, local, pivots, 1.0, np.random.default_rng())
    np.testing.assert_array_equal(labels, [0, -1, 1, 1, 2, 2, -1])
    np.testing.assert_array_equal(discarded, [False, True, False, False, False, False, False])


def test_clustered_rows_need_local_labels():
    with pytest.raises(ValueError, match="local label"):
        refine_labels(
            np.array([0, 0]),
            np.array([1, 1]),
            np.array([0, -1]),
            np.array([True, False]),
            1.0,
            np.random.default_rng(),
        )
