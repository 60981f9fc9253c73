"""Retrieval metrics on the standard query/gallery protocol: mAP, CMC and mINP.

The protocol is Market-1501's, shared by DukeMTMC-reID, MSMT17 and VeRi-776. For each query:

- gallery images of the query's identity taken by the query's camera are ignored (retrieving
  them says nothing about matching across cameras);
- junk gallery images (pid -1) are ignored;
- the remaining gallery images of the query's identity are its true matches; a query without
  any is skipped and counted (``num_query - num_valid_query``).

Distances are squared Euclidean distances between L2-normalised embeddings,
``|q - g|^2 = 2 - 2 cos(q, g)``, computed one block of query rows at a time so that the Q x G
matrix never exists whole (for MSMT17's 11,659 x 82,161 test split it would take 3.8 GB in
float32), on the CPU or on a CUDA device (``device``).

Ranking counts instead of ordering: a true match's rank is one plus the number of kept gallery
images before it, which is the number of kept images at a smaller distance (a binary search of
the match's distance in its row sorted by value, ignored images set to +inf) plus, only when
other images share its distance, those of them in earlier gallery columns. So each row is
sorted by value alone (NumPy sorts float32 several times faster than the 64-bit keys an
order-preserving argsort needs), and the rest of the work is over the few true matches of each
query: their binary searches, and the per-query means, vectorised across a block.

Ties: gallery images at equal distance keep gallery order (the earlier gallery column ranks
higher), as a stable sort would rank them, so every number is deterministic. Distances are
compared in float32 and must be finite.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # PyTorch is imported only by the device path: the CPU path needs NumPy alone
    import torch

# Working memory per (query, gallery) cell of a block: ranking takes about 13 bytes (the float32
# distance, its sorted copy, a copy of a block the caller owns, a mask); the re-ranking blocks of
# pipeline.evaluate.rerank are sized by the same budget and need more.
BYTES_PER_CELL = 28
DEFAULT_BLOCK_BYTES = 256 * 2**20
TIE_BLOCK_CELLS = 2**24  # gallery cells compared at once when counting equal-distance images


# the metrics a run is scored and compared by (pipeline.evaluate.uncertainty)
METRICS = ("mAP", "rank1", "rank5", "mINP")


@dataclass(frozen=True)
class QueryScores:
    """Per-query results, one entry per query in query order (the input order).

    - ``pid``: the query's identity (int64);
    - ``ap``: its average precision (float64; NaN for a query without a valid match);
    - ``inp``: its inverse negative penalty, true matches / rank of the hardest one (float64;
      NaN, or 0 as the per-query table stores it, without a valid match);
    - ``first_rank``: the 1-based rank of its first true match (int64; 0 without a valid match),
      so that CMC at rank k is the fraction of valid queries with ``0 < first_rank <= k``;
    - ``query``: an id of each query, e.g. its row in the dataset index (default: 0..Q-1), by
      which runs on the same test set are paired.

    A query is valid (counted in the means) exactly when ``first_rank > 0``.
    """

    pid: np.ndarray
    ap: np.ndarray
    inp: np.ndarray
    first_rank: np.ndarray
    query: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.query is None:
            object.__setattr__(self, "query", np.arange(len(self.first_rank), dtype=np.int64))
        lengths = {len(self.query), len(self.pid), len(self.ap), len(self.inp)}
        if lengths != {len(self.first_rank)}:
            raise ValueError("query, pid, ap, inp and first_rank need one entry per query")

    @property
    def valid(self) -> np.ndarray:
        """Boolean mask of the queries with at least one true match."""
        return np.asarray(self.first_rank) > 0

    def take(self, indices: np.ndarray) -> QueryScores:
        """The scores of the queries at ``indices`` (repeats allowed, as in a bootstrap)."""
        return QueryScores(
            self.pid[indices],
            self.ap[indices],
            self.inp[indices],
            self.first_rank[indices],
            self.query[indices],
        )

    def values(self, metrics: Sequence[str] = METRICS) -> np.ndarray:
        """(queries x metrics) float64 value of each query for each metric, whose mean over the
        valid queries is the metric: AP for ``mAP``, INP for ``mINP``, 1 or 0 for ``rank<k>``
        (first true match within the top k). Rows of queries without a true match are 0."""
        return np.stack([self._column(metric) for metric in metrics], axis=1)

    def _column(self, metric: str) -> np.ndarray:
        valid = self.valid
        if metric == "mAP":
            column = np.asarray(self.ap, dtype=np.float64)
        elif metric == "mINP":
            column = np.asarray(self.inp, dtype=np.float64)
        elif metric.startswith("rank") and metric[4:].isdigit() and int(metric[4:]) >= 1:
            column = (np.asarray(self.first_rank) <= int(metric[4:])).astype(np.float64)
        else:
            raise ValueError(f"unknown metric {metric!r}: expected mAP, mINP or rank<k>")
        return np.where(valid, column, 0.0)

    def metrics(self, metrics: Sequence[str] = METRICS) -> np.ndarray:
        """Each metric over the valid queries (NaN when none is valid), as the evaluation
        reports it."""
        valid = self.valid
        if not valid.any():
            return np.full(len(metrics), np.nan)
        return self.values(metrics)[valid].mean(axis=0)


@dataclass(frozen=True)
class RetrievalMetrics:
    """Retrieval quality over the valid queries; every value is a fraction in [0, 1].

    ``cmc[k - 1]`` is the fraction of valid queries with a true match among their top k.
    ``mINP`` is the mean over valid queries of (true matches) / (rank of the hardest true match).
    With no valid query the fractions are NaN. ``per_query`` holds the per-query values the
    means are taken over (:class:`QueryScores`).
    """

    mAP: float
    cmc: np.ndarray
    mINP: float
    num_query: int
    num_valid_query: int
    per_query: QueryScores = field(repr=False, compare=False)

    def rank(self, k: int) -> float:
        """CMC at rank ``k`` (1-based)."""
        return float(self.cmc[k - 1])

    @classmethod
    def from_query_scores(cls, scores: QueryScores, max_rank: int = 10) -> RetrievalMetrics:
        """mAP, CMC (ranks 1..``max_rank``) and mINP: the means over the valid queries."""
        valid = scores.valid
        num_valid = int(valid.sum())
        if num_valid == 0:
            nan = float("nan")
            return cls(nan, np.full(max_rank, np.nan), nan, len(valid), 0, scores)
        first = scores.first_rank[valid]
        return cls(
            mAP=float(scores.ap[valid].mean()),
            cmc=(first[:, None] <= np.arange(1, max_rank + 1)[None, :]).mean(axis=0),
            mINP=float(scores.inp[valid].mean()),
            num_query=len(valid),
            num_valid_query=num_valid,
            per_query=scores,
        )


def rows_per_block(num_gallery: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Query rows per block so that ranking one block takes about ``block_bytes``."""
    return max(1, block_bytes // (BYTES_PER_CELL * max(1, num_gallery)))


def squared_distance_blocks(
    query_features: np.ndarray, gallery_features: np.ndarray, rows: int
) -> Iterator[np.ndarray]:
    """Yield ``2 - 2 q . g`` (float32) for consecutive blocks of ``rows`` query rows.

    For L2-normalised embeddings this is the squared Euclidean distance.
    """
    gallery_t = np.asarray(gallery_features, dtype=np.float32).T
    for start in range(0, len(query_features), rows):
        block = np.asarray(query_features[start : start + rows], dtype=np.float32) @ gallery_t
        block *= -2
        block += 2
        yield block


def device_distance_blocks(
    query_features: np.ndarray, gallery_features: np.ndarray, rows: int, device: str
) -> Iterator[torch.Tensor]:
    """:func:`squared_distance_blocks` computed on a torch ``device``, yielded as tensors there.

    The gallery is copied to the device once, each block of queries on its turn.
    """
    import torch

    gallery_t = torch.as_tensor(np.asarray(gallery_features, dtype=np.float32), device=device).T
    for start in range(0, len(query_features), rows):
        block = np.asarray(query_features[start : start + rows], dtype=np.float32)
        distance = torch.as_tensor(block, device=device) @ gallery_t
        distance *= -2
        distance += 2
        yield distance


def evaluate_retrieval(
    query_features: np.ndarray | None,
    query_pids: np.ndarray,
    query_camids: np.ndarray,
    gallery_features: np.ndarray | None,
    gallery_pids: np.ndarray,
    gallery_camids: np.ndarray,
    *,
    max_rank: int = 10,
    chunk_size: int | None = None,
    distance: np.ndarray | Iterable[np.ndarray] | None = None,
    device: str | None = None,
) -> RetrievalMetrics:
    """mAP, CMC (ranks 1..``max_rank``), mINP and per-query scores of a query/gallery retrieval.

    Distances are ``2 - 2 q . g`` of the (L2-normalised) features, computed in blocks of
    ``chunk_size`` query rows (default: sized by :func:`rows_per_block`). Alternatively pass
    ``distance``: a Q x G array, or an iterable of row blocks that together cover the queries
    in order (such as :func:`pipeline.evaluate.rerank.k_reciprocal_distance_blocks`); the
    features are then not used and may be None.

    ``device``: None (default) computes the products and ranks the gallery with NumPy on the
    CPU; a torch device (``cuda``, ``cuda:1``; ``cpu`` runs the same code on the CPU) does both
    with PyTorch there, with the same numbers up to the rounding of the products.

    AP is the mean over a query's true matches of the precision at each match's rank (as in
    the Market-1501 and open-reid code); mINP is the mean inverse negative penalty of Ye et al.,
    "Deep Learning for Person Re-identification: A Survey and Outlook" (TPAMI 2021).
    """
    query_pids = np.asarray(query_pids, dtype=np.int64)
    query_camids = np.asarray(query_camids, dtype=np.int64)
    gallery_pids = np.asarray(gallery_pids, dtype=np.int64)
    gallery_camids = np.asarray(gallery_camids, dtype=np.int64)
    num_query, num_gallery = len(query_pids), len(gallery_pids)
    if len(query_camids) != num_query or len(gallery_camids) != num_gallery:
        raise ValueError("pids and camids must have one entry per query / gallery image")
    if max_rank < 1:
        raise ValueError(f"max_rank must be at least 1, got {max_rank}")
    rows = chunk_size or rows_per_block(num_gallery)
    if distance is None:
        if query_features is None or gallery_features is None:
            raise ValueError("pass the features or a precomputed distance")
        if len(query_features) != num_query or len(gallery_features) != num_gallery:
            raise ValueError("features must have one row per query / gallery image")
        if device is None:
            blocks: Iterable = squared_distance_blocks(query_features, gallery_features, rows)
        else:
            blocks = device_distance_blocks(query_features, gallery_features, rows, device)
    else:
        given = distance
        if isinstance(given, np.ndarray):
            given = (distance[start : start + rows] for start in range(0, num_query, rows))
        blocks = (_own_copy(block, device) for block in given)

    gallery = _Gallery.of(gallery_pids, gallery_camids)
    ap, first_rank, inp = [], [], []
    start = 0
    for block in blocks:
        stop = start + len(block)
        if block.ndim != 2 or block.shape[1] != num_gallery or stop > num_query:
            raise ValueError(
                f"distance block of shape {tuple(block.shape)} at query row {start} does not "
                f"fit {num_query} queries x {num_gallery} gallery images"
            )
        if not _all_finite(block):
            raise ValueError(f"distance block at query row {start} holds NaN or infinite values")
        row, column, ignored = gallery.pairs(query_pids[start:stop], query_camids[start:stop])
        rank = _match_ranks(block, row, column, ignored, gallery.junk)
        scores = _query_scores(len(block), row, rank)
        ap.append(scores[0])
        first_rank.append(scores[1])
        inp.append(scores[2])
        start = stop
    if start != num_query:
        raise ValueError(f"distance blocks cover {start} query rows, expected {num_query}")

    def joined(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)

    scores = QueryScores(
        pid=query_pids,
        ap=joined(ap, np.float64),
        inp=joined(inp, np.float64),
        first_rank=joined(first_rank, np.int64),
    )
    return RetrievalMetrics.from_query_scores(scores, max_rank)


@dataclass(frozen=True)
class _Gallery:
    """Gallery labels, with the kept (non-junk) images grouped by identity."""

    camids: np.ndarray
    junk: np.ndarray  # columns of the junk images (pid -1)
    order: np.ndarray  # columns of the kept images, by identity, then by column
    sorted_pids: np.ndarray  # their identities, ascending

    @classmethod
    def of(cls, pids: np.ndarray, camids: np.ndarray) -> _Gallery:
        kept = np.flatnonzero(pids != -1)
        order = kept[np.argsort(pids[kept], kind="stable")]
        return cls(camids, np.flatnonzero(pids == -1), order, pids[order])

    def pairs(
        self, query_pids: np.ndarray, query_camids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Kept gallery images of each query's identity as (row, column) pairs, rows ascending.

        Returns the true matches' rows and columns, and the (rows, columns) of the images taken
        by the query's camera, which are ignored.
        """
        first = np.searchsorted(self.sorted_pids, query_pids, side="left")
        counts = np.searchsorted(self.sorted_pids, query_pids, side="right") - first
        row = np.repeat(np.arange(len(query_pids)), counts)
        column = self.order[first[row] + _position_in_row(row, counts)]
        same_camera = self.camids[column] == query_camids[row]
        return row[~same_camera], column[~same_camera], (row[same_camera], column[same_camera])


def _position_in_row(row: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """0-based position of each entry among the entries of its row (``row`` ascending,
    ``counts[r]`` entries in row ``r``)."""
    return np.arange(len(row)) - (np.cumsum(counts) - counts)[row]


def _own_copy(block: np.ndarray, device: str | None) -> np.ndarray | torch.Tensor:
    """A float32 copy of a caller's distance block, to overwrite; a tensor on ``device``."""
    if device is None:
        return np.array(block, dtype=np.float32)
    import torch

    return torch.tensor(np.asarray(block, dtype=np.float32), device=device)


def _all_finite(distance: np.ndarray | torch.Tensor) -> bool:
    if isinstance(distance, np.ndarray):
        return bool(np.isfinite(distance).all())
    return bool(distance.isfinite().all())


def _match_ranks(
    distance: np.ndarray | torch.Tensor,
    row: np.ndarray,
    column: np.ndarray,
    ignored: tuple[np.ndarray, np.ndarray],
    junk: np.ndarray,
) -> np.ndarray:
    """1-based rank of each true match ``(row, column)`` among the kept images of its row.

    Ignored images are set to +inf in ``distance`` (which is overwritten), after every kept
    one. A match's rank is then one plus the number of images at a smaller distance, found by
    a binary search in the row sorted by value, plus, only when other images share its
    distance, the number of those in earlier columns.
    """
    if not isinstance(distance, np.ndarray):
        return _match_ranks_on_device(distance, row, column, ignored, junk)
    distance[:, junk] = np.inf
    distance[ignored] = np.inf
    value = distance[row, column]
    ranked = _sorted_rows(distance)
    below = np.empty(len(row), dtype=np.int64)
    equal = np.empty(len(row), dtype=np.int64)
    for r in np.unique(row):
        at = slice(*np.searchsorted(row, [r, r + 1]))
        below[at] = np.searchsorted(ranked[r], value[at], side="left")
        equal[at] = np.searchsorted(ranked[r], value[at], side="right") - below[at]
    rank = below + 1
    for i in np.flatnonzero(equal > 1):  # the match itself is one of the equal distances
        rank[i] += np.count_nonzero(distance[row[i], : column[i]] == value[i])
    return rank


def _sorted_rows(distance: np.ndarray) -> np.ndarray:
    """Each row sorted by value, on every core the process may use (NumPy's sort releases the
    GIL): float32 values sort several times faster than the keys of an argsort."""
    ranked = np.array(distance)
    parts = np.array_split(ranked, min(len(ranked), len(os.sched_getaffinity(0))))
    with ThreadPoolExecutor(len(parts)) as pool:
        for _ in pool.map(lambda part: part.sort(axis=1), parts):
            pass
    return ranked


def _match_ranks_on_device(
    distance: torch.Tensor,
    row: np.ndarray,
    column: np.ndarray,
    ignored: tuple[np.ndarray, np.ndarray],
    junk: np.ndarray,
) -> np.ndarray:
    """:func:`_match_ranks` with PyTorch on the device that holds ``distance``."""
    import torch

    if len(row) == 0:
        return np.empty(0, dtype=np.int64)

    def put(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, device=distance.device)

    distance[:, put(junk)] = torch.inf
    distance[put(ignored[0]), put(ignored[1])] = torch.inf
    row_t, column_t = put(row), put(column)
    value = distance[row_t, column_t]
    # the matches of each row as one padded row of needles for a batched binary search
    counts = np.bincount(row, minlength=len(distance))
    position = put(_position_in_row(row, counts))
    needles = torch.full((len(distance), int(counts.max())), torch.inf, device=distance.device)
    needles[row_t, position] = value
    ranked = torch.sort(distance, dim=1).values
    below = torch.searchsorted(ranked, needles)[row_t, position]
    equal = torch.searchsorted(ranked, needles, right=True)[row_t, position] - below
    rank = below + 1
    tied = torch.nonzero(equal > 1).flatten()
    columns = torch.arange(distance.shape[1], device=distance.device)
    step = max(1, TIE_BLOCK_CELLS // distance.shape[1])
    for lo in range(0, len(tied), step):
        which = tied[lo : lo + step]
        same = distance[row_t[which]] == value[which, None]
        same &= columns[None, :] < column_t[which, None]
        rank[which] += same.sum(dim=1)
    return rank.cpu().numpy()


def _query_scores(
    num_rows: int, row: np.ndarray, rank: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query of a block: AP, rank of the first true match, and INP (NaN / 0 if no match),
    from the ranks of the true matches (rows ascending)."""
    num_matches = np.bincount(row, minlength=num_rows)
    order = np.lexsort((rank, row))
    row, rank = row[order], rank[order]
    hits = _position_in_row(row, num_matches) + 1  # true matches ranked at or above this one
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.bincount(row, weights=hits / rank, minlength=num_rows) / num_matches
    first_rank = np.zeros(num_rows, dtype=np.int64)
    first_rank[row[hits == 1]] = rank[hits == 1]
    hardest = hits == num_matches[row]
    inp = np.full(num_rows, np.nan)
    inp[row[hardest]] = num_matches[row[hardest]] / rank[hardest]
    return ap, first_rank, inp
