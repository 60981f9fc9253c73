"""Pivot scores (Eq. 4): the exact mean distance and scores worked out by hand, as the paper
reads and as the released code computes them."""

from fractions import Fraction

import numpy as np
import pytest

from pipeline.cluster.knn import knn
from pipeline.cluster.pivots import (
    knn_mean_distance,
    mean_pairwise_distance,
    pivot_scores,
    select_pivots,
)

# Four unit vectors in the plane. Pairwise distances 1 - cos:
#   d01 = 0.4, d02 = 1, d03 = 2, d12 = 0.2, d13 = 1.6, d23 = 1
# mean over the 6 pairs (= over the 12 ordered pairs i != j): 6.2 / 6 = 31/30
PLANE = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
MEAN = Fraction(31, 30)


def test_mean_distance_of_the_hand_example():
    assert mean_pairwise_distance(PLANE) == pytest.approx(float(MEAN), abs=1e-7)


def test_mean_distance_matches_brute_force_over_pairs_i_ne_j():
    x = np.random.default_rng(0).standard_normal((257, 9))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    dist = 1 - x @ x.T
    brute = dist[~np.eye(257, dtype=bool)].mean()
    assert mean_pairwise_distance(x.astype(np.float32), chunk_size=50) == pytest.approx(
        brute, abs=1e-6
    )


def test_pivot_scores_by_hand():
    sims, idx = knn(PLANE, 2)
    scores = pivot_scores(sims, mean_pairwise_distance(PLANE))

    def term(d):
        return 1 / (Fraction(d) + MEAN)

    expected = [
        term("0.4") + term(1),  # node 0: neighbours 1 (0.4) and 2 (1)
        term("0.2") + term("0.4"),  # node 1: neighbours 2 (0.2) and 0 (0.4)
        term("0.2") + term(1),  # node 2: neighbours 1 (0.2) and 0 or 3 (both 1)
        term(1) + term("1.6"),  # node 3: neighbours 2 (1) and 1 (1.6)
    ]
    np.testing.assert_allclose(scores, [float(e) for e in expected], rtol=1e-6)
    # scores 1.19, 1.51, 1.30, 0.87 with mean 1.22: nodes 1 and 2 are the pivots
    mean = sum(expected) / 4
    assert [e > mean for e in expected] == [False, True, True, False]
    np.testing.assert_array_equal(
        select_pivots(scores, np.array([0, 0, 0, 0])), [False, True, True, False]
    )


def test_missing_neighbours_add_nothing():
    sims = np.array([[0.5, -np.inf]], dtype=np.float32)
    assert pivot_scores(sims, 0.5)[0] == pytest.approx(1.0)


def test_outliers_are_never_pivots_but_count_in_the_mean():
    scores = np.array([1.0, 2.0, 9.0, 3.0])
    np.testing.assert_array_equal(
        select_pivots(scores, np.array([0, 0, -1, 0])), [False, False, False, False]
    )
    np.testing.assert_array_equal(
        select_pivots(scores, np.array([0, 0, 0, 0])), [False, False, True, False]
    )


def test_release_scores_by_hand():
    # the release's k = 3 counts the image itself: lists of 2 other images, as in the test above
    # distances in the lists: node 0: 0.4, 1; node 1: 0.2, 0.4; node 2: 0.2, 1; node 3: 1, 1.6
    # mean over the 4 x 3 entries with self at 0: 5.8 / 12 = 29/60 (the pairs' mean is 31/30)
    sims, _ = knn(PLANE, 2)
    mean = Fraction(29, 60)
    assert knn_mean_distance(sims) == pytest.approx(float(mean), abs=1e-7)

    def term(d):
        return 1 / (Fraction(d) + mean)

    # only links of similarity >= 0.5 (distance <= 0.5) count: node 3 has none
    expected = [term("0.4"), term("0.2") + term("0.4"), term("0.2"), Fraction(0)]
    scores = pivot_scores(sims, knn_mean_distance(sims), min_sim=0.5)
    np.testing.assert_allclose(scores, [float(e) for e in expected], rtol=1e-6)
    # 1.13, 2.60, 1.46, 0 with mean 1.30: nodes 1 and 2 are the pivots again
    np.testing.assert_array_equal(
        select_pivots(scores, np.array([0, 0, 0, 0])), [False, True, True, False]
    )


def test_knn_mean_distance_leaves_missing_neighbours_out():
    # two rows with one neighbour each at distance 0.5 and 0.3, one missing: (0.5 + 0.3) / 4
    sims = np.array([[0.5, -np.inf], [0.7, -np.inf]], dtype=np.float32)
    assert knn_mean_distance(sims) == pytest.approx(0.2)
