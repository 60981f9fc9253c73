"""pipeline.cluster.kreciprocal: the one k-reciprocal encoder, on cases checked by hand."""

import numpy as np
from scipy import sparse

from pipeline.cluster import kreciprocal
from pipeline.cluster.jaccard import jaccard_graph
from pipeline.cluster.knn import knn
from pipeline.evaluate.rerank import k_reciprocal_distance_blocks
from tests.test_cluster_jaccard import blobs
from tests.test_rerank import clustered

# Nine images ranked by hand (image itself first, -1 = missing); 6, 7 and 8 are fillers that
# rank none of 0-5. With k1 = 6, R(i, 6) comes from the first 7 entries and R(i, 3) from the
# first 4: R(0, 6) = {0, 1, 2, 3}, R(0, 3) = {0}, R(1, 3) = {1, 2, 3, 4}, R(2, 3) = {1, 2, 5},
# R(3, 3) = {1, 3}.
RANKING = np.array(
    [
        [0, 6, 7, 8, 1, 2, 3],
        [1, 2, 3, 4, 0, 7, 8],
        [2, 1, 5, 6, 0, 7, 8],
        [3, 1, 6, 7, 0, 8, -1],
        [4, 1, 6, 7, 8, -1, -1],
        [5, 2, 6, 7, 8, -1, -1],
        [6, 7, 8, -1, -1, -1, -1],
        [7, 6, 8, -1, -1, -1, -1],
        [8, 6, 7, -1, -1, -1, -1],
    ]
)


def index_distance(first, second):
    return np.abs(first - second) / 10.0


def test_expansion_joins_half_sets_with_more_than_two_thirds_inside():
    encoding = kreciprocal.encode(RANKING, 6, index_distance).toarray()
    # R(1, 3) has 3 of its 4 members in R(0, 6) and brings 4; R(2, 3) has 2 of 3 (not more
    # than two thirds) and leaves 5 out
    kernel = np.exp(-np.arange(5) / 10.0)
    np.testing.assert_allclose(encoding[0], np.append(kernel / kernel.sum(), [0, 0, 0, 0]))
    np.testing.assert_allclose(encoding.sum(axis=1), 1.0)


def test_local_query_expansion_averages_the_listed_rows():
    encoding = sparse.csr_array(np.array([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75], [1.0, 0.0, 0.0]]))
    ranking = np.array([[0, 1], [1, -1], [2, 0]])
    expanded = kreciprocal.local_query_expansion(encoding, ranking, 2).toarray()
    np.testing.assert_array_equal(
        expanded, [[0.25, 0.375, 0.375], [0.0, 0.25, 0.75], [0.75, 0.25, 0.0]]
    )
    assert kreciprocal.local_query_expansion(encoding, ranking, 1) is encoding


def test_jaccard_pairs_and_blocks_agree_with_the_hand_computed_distances(monkeypatch):
    encoding = sparse.csr_array(
        np.array([[0.5, 0.5, 0, 0], [0.5, 0, 0.5, 0], [0, 0, 0, 1.0], [0.5, 0.5, 0, 0]])
    )
    # m(0, 1) = m(1, 3) = 0.5, so d = 1 - 0.5 / 1.5; rows 0 and 3 are equal; 2 shares nothing
    expected = np.array([[0, 2 / 3, 1, 0], [2 / 3, 0, 1, 2 / 3], [1, 1, 0, 1], [0, 2 / 3, 1, 0]])
    np.testing.assert_allclose(kreciprocal.jaccard_block(encoding, encoding.tocsc()), expected)
    monkeypatch.setattr(kreciprocal, "SHARED_BLOCK", 1)  # one row per block
    lo, hi, distance = kreciprocal.jaccard_pairs(encoding)
    np.testing.assert_array_equal(lo, [0, 0, 1])
    np.testing.assert_array_equal(hi, [1, 3, 3])
    np.testing.assert_allclose(distance, [2 / 3, 0, 2 / 3])


def test_clustering_and_re_ranking_go_through_the_one_encoder(monkeypatch):
    rankings = []
    encode = kreciprocal.encode

    def spy(ranking, k1, distances, dtype=np.float64):
        rankings.append(ranking)
        return encode(ranking, k1, distances, dtype)

    monkeypatch.setattr(kreciprocal, "encode", spy)
    x = blobs(n=30)
    jaccard_graph(x, knn(x, 7)[1], 8, 3)
    query, gallery = clustered(np.random.default_rng(0), 5, 20)
    next(k_reciprocal_distance_blocks(query, gallery, k1=5, k2=3))
    clustering, re_ranking = rankings
    # clustering: k1 entries, the image itself first; re-ranking: k1 + 1, the image included
    np.testing.assert_array_equal(clustering[:, 0], np.arange(30))
    assert clustering.shape == (30, 8)
    assert re_ranking.shape == (25, 6)
    assert (re_ranking == np.arange(25)[:, None]).any(axis=1).all()
