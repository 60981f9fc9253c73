"""Label refinement (Eq. 5) on a hand-built case with known kept and discarded members."""

import numpy as np
import pytest

from pipeline.cluster.refine import refine_labels

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


def refine(p, mode="paper", seed=0):
    rng = np.random.default_rng(seed)
    return refine_labels(CLUSTERS, CAMIDS, LOCAL, PIVOT, p, rng, mode)


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
