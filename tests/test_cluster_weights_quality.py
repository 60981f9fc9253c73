"""Cluster weights (Eq. 6) and the quality diagnostics (Fig. 4) on hand-built partitions."""

import math

import numpy as np
import pytest

from pipeline.cluster.quality import cluster_quality, discard_ratio
from pipeline.cluster.weights import cluster_weights, sample_weights

# cluster 0: cameras 1, 1, 2, 2 -> H = ln 2;  cluster 1: camera 3 only -> H = 0;
# cluster 2: cameras 1, 2, 3, 3 -> H = 1.5 ln 2;  last row: outlier
LABELS = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2, -1])
CAMIDS = np.array([1, 1, 2, 2, 3, 3, 1, 2, 3, 3, 2])


def test_cluster_weights_are_log_one_plus_camera_entropy():
    expected = [math.log(1 + math.log(2)), 0.0, math.log(1 + 1.5 * math.log(2))]
    np.testing.assert_allclose(cluster_weights(LABELS, CAMIDS), expected, rtol=1e-12)


def test_weight_floor_raises_small_weights_only():
    plain = cluster_weights(LABELS, CAMIDS)
    floored = cluster_weights(LABELS, CAMIDS, floor=0.1)
    np.testing.assert_allclose(floored, np.maximum(plain, 0.1), rtol=1e-12)
    assert (plain == 0).any() and (floored[plain == 0] == 0.1).all()
    assert sample_weights(LABELS, CAMIDS, floor=0.1)[-1] == 0  # outliers stay 0
    with pytest.raises(ValueError, match="floor"):
        cluster_weights(LABELS, CAMIDS, floor=-0.1)


def test_sample_weights_are_zero_for_outliers():
    weights = sample_weights(LABELS, CAMIDS)
    assert weights[-1] == 0 and weights[4] == 0
    assert weights[0] == pytest.approx(math.log(1 + math.log(2)))
    assert np.isfinite(weights).all()


def test_all_outliers_give_no_weights():
    assert len(cluster_weights(np.array([-1, -1]), np.array([1, 2]))) == 0


# predicted clusters: {0, 1, 2} = pids 5, 5, 7;  {3, 4} = 7, 7;  row 5 (pid 5) an outlier;
# row 6 has an unknown pid and is ignored
PRED = np.array([0, 0, 0, 1, 1, -1, 1])
PIDS = np.array([5, 5, 7, 7, 7, 5, -1])


def test_pairwise_precision_recall_and_expansion_by_hand():
    q = cluster_quality(PRED, PIDS)
    # predicted pairs: 3 + 1 = 4, same-identity among them: (0, 1) and (3, 4) -> 2 / 4
    assert q.precision == pytest.approx(0.5)
    # identity pairs: 3 (pid 5, incl. the outlier) + 3 (pid 7) = 6 -> 2 / 6
    assert q.recall == pytest.approx(1 / 3)
    assert q.fscore == pytest.approx(2 * 0.5 / 3 / (0.5 + 1 / 3))
    # pid 5 lies in cluster 0 only (its outlier does not count), pid 7 in clusters 0 and 1
    assert q.expansion == pytest.approx(1.5)
    assert (q.n_clusters, q.n_outliers, q.n_images) == (2, 1, 6)


def test_perfect_partition():
    q = cluster_quality(np.array([3, 3, 8, 8, 8]), np.array([1, 1, 2, 2, 2]))
    assert (q.precision, q.recall, q.fscore, q.expansion) == (1.0, 1.0, 1.0, 1.0)


def test_nothing_to_count_is_nan():
    q = cluster_quality(np.array([-1, -1]), np.array([4, 4]))
    assert math.isnan(q.precision) and q.recall == 0.0 and math.isnan(q.expansion)


def test_discard_ratio_counts_clustered_images_only():
    assert discard_ratio(np.array([0, 0, 1, -1]), np.array([True, False, False, False])) == 1 / 3
