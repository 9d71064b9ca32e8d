"""Rank fusion for hybrid search: weighted reciprocal rank fusion (RRF) of several ranked id lists.

RRF (Cormack, Clarke and Buettcher, SIGIR 2009) scores each id by the sum over the lists that contain it of
`weight / (k + rank)`, rank 1-based; an id missing from a list gets nothing from it. It needs no score calibration
(BM25 scores and cosines live on different scales) and k = 60 is the paper's constant. Ties go to the id with the
better best rank, then to the earlier list's order, so the result is deterministic.

Example:
    >>> reciprocal_rank_fusion([["a", "b", "c"], ["c", "a"]])
    [('a', 0.03252247488101534), ('c', 0.032266458495966696), ('b', 0.016129032258064516)]
"""

from __future__ import annotations

from collections.abc import Sequence


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[str]], weights: Sequence[float] | None = None, k: float = 60.0
) -> list[tuple[str, float]]:
    """Fuse ranked lists of ids (best first) into one list of (id, score), best first."""
    weights = [1.0] * len(rankings) if weights is None else list(weights)
    if len(weights) != len(rankings):
        raise ValueError(f"got {len(weights)} weights for {len(rankings)} rankings; give one weight per ranking.")
    if k < 0 or any(w < 0 for w in weights):
        raise ValueError(f"k and the weights must be >= 0, got k={k}, weights={weights}.")
    scores: dict[str, float] = {}
    best: dict[str, tuple[int, int]] = {}  # id -> (best rank, list index of that rank)
    for list_index, (ranking, weight) in enumerate(zip(rankings, weights)):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
            best[item] = min(best.get(item, (rank, list_index)), (rank, list_index))
    return sorted(scores.items(), key=lambda kv: (-kv[1], best[kv[0]]))
