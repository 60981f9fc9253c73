"""The paper's Fig. 4 effect on synthetic features with planted identities and a camera bias:
refined clusters are purer and spread each identity over fewer clusters than global ones."""

import numpy as np

from pipeline.cluster.agglomerative import local_labels_per_camera
from pipeline.cluster.global_infomap import infomap_clusters
from pipeline.cluster.knn import knn
from pipeline.cluster.quality import cluster_quality
from pipeline.cluster.refine import refine_epoch
from pipeline.cluster.synthetic import planted_features


def test_refinement_raises_precision_and_lowers_expansion():
    # camera term as strong as the identity term: global clusters merge people per camera
    features, camids, pids = planted_features(1200, dim=64, n_cams=6, camera_strength=1.0, seed=1)
    sims, idx = knn(features, 15)
    clusters = infomap_clusters(sims, idx, min_sim=0.5, min_size=4)
    local = local_labels_per_camera(features, camids, ratio=5)
    result = refine_epoch(features, clusters, camids, local, 1.0, np.random.default_rng(0))

    before = cluster_quality(clusters, pids)
    after = cluster_quality(result.labels, pids)
    assert after.precision > before.precision + 0.05
    assert after.expansion < before.expansion - 0.5
    assert result.discarded.sum() > 0 and result.pivots.sum() > 0
    # the local clusters, free of the camera term, are far purer than the global ones
    assert cluster_quality(local + 100 * camids, pids).precision > 2 * before.precision
