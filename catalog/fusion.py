"""Fusion for hybrid search: a convex combination of normalised scores, or weighted reciprocal rank fusion (RRF).

Convex combination (the default of `--hybrid`): each ranker's scores over the candidate union are rescaled to a
common range, min-max to [0, 1] (or z-scores), and summed with weights: `score(d) = w_v·v'(d) + w_t·t'(d)`. Unlike
RRF it keeps how far apart two products are, so a weak ranker given a small weight only breaks the strong one's
ties and near-ties instead of moving its top products by whole ranks. Every product in the union must have a score
from every ranker (catalog.search computes the cosine and the BM25 of each candidate; BM25 is 0 where no query
word matches).

RRF (Cormack, Clarke and Buettcher, SIGIR 2009) scores each id by the sum over the lists that contain it of
`weight / (k + rank)`, rank 1-based; an id missing from a list gets nothing from it. It needs no score calibration
and k = 60 is the paper's constant.

Both break ties by the better best rank, then the earlier list's order, so the result is deterministic.

Example:
    >>> reciprocal_rank_fusion([["a", "b", "c"], ["c", "a"]])
    [('a', 0.03252247488101534), ('c', 0.032266458495966696), ('b', 0.016129032258064516)]
    >>> fused = convex_fusion([{"a": 0.9, "b": 0.5, "c": 0.1}, {"a": 2.0, "b": 8.0, "c": 8.0}], weights=[0.2, 0.8])
    >>> [(i, round(s, 3)) for i, s in fused]  # b and c tie on BM25; the cosine breaks the tie
    [('b', 0.9), ('c', 0.8), ('a', 0.2)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

FUSIONS = ("convex", "rrf")
NORMALISATIONS = ("minmax", "zscore")


def _check_weights(weights, n: int) -> list[float]:
    weights = [1.0] * n if weights is None else [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"got {len(weights)} weights for {n} rankings; give one weight per ranking.")
    if any(w < 0 for w in weights):
        raise ValueError(f"the weights must be >= 0, got {weights}.")
    return weights


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[str]], weights: Sequence[float] | None = None, k: float = 60.0
) -> list[tuple[str, float]]:
    """Fuse ranked lists of ids (best first) into one list of (id, score), best first."""
    weights = _check_weights(weights, len(rankings))
    if k < 0:
        raise ValueError(f"k must be >= 0, got k={k}.")
    scores: dict[str, float] = {}
    best: dict[str, tuple[int, int]] = {}  # id -> (best rank, list index of that rank)
    for list_index, (ranking, weight) in enumerate(zip(rankings, weights)):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
            best[item] = min(best.get(item, (rank, list_index)), (rank, list_index))
    return sorted(scores.items(), key=lambda kv: (-kv[1], best[kv[0]]))


def normalise(scores: Mapping[str, float], method: str = "minmax") -> dict[str, float]:
    """Scores rescaled over the given ids: min-max to [0, 1] or z-scores; all-equal scores give 1 (minmax) or 0."""
    if method not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {list(NORMALISATIONS)}, got {method!r}.")
    if not scores:
        return {}
    values = list(scores.values())
    if method == "minmax":
        low, high = min(values), max(values)
        return {i: (s - low) / (high - low) if high > low else 1.0 for i, s in scores.items()}
    mean = sum(values) / len(values)
    std = (sum((s - mean) ** 2 for s in values) / len(values)) ** 0.5
    return {i: (s - mean) / std if std > 0 else 0.0 for i, s in scores.items()}


def _ranks(scores: Mapping[str, float]) -> dict[str, int]:
    """1-based rank of each id by descending score (ties share the better rank)."""
    ordered = sorted(scores.values(), reverse=True)
    first = {}
    for rank, value in enumerate(ordered, start=1):
        first.setdefault(value, rank)
    return {i: first[s] for i, s in scores.items()}


def convex_fusion(
    score_lists: Sequence[Mapping[str, float]],
    weights: Sequence[float] | None = None,
    normalisation: str = "minmax",
) -> list[tuple[str, float]]:
    """Weighted sum of each ranker's normalised scores, (id, score) best first; every id needs every ranker's score."""
    weights = _check_weights(weights, len(score_lists))
    ids = list(score_lists[0]) if score_lists else []
    for index, scores in enumerate(score_lists):
        if scores.keys() != set(ids):
            missing = sorted(set(ids) ^ scores.keys())[:5]
            raise ValueError(
                f"ranker {index} scores a different set of ids (e.g. {missing}); score the same candidates in "
                "every ranker (catalog.search fills in the cosine / BM25 of the other ranker's hits)."
            )
    normalised = [normalise(scores, normalisation) for scores in score_lists]
    fused = {i: sum(w * n[i] for w, n in zip(weights, normalised)) for i in ids}
    ranks = [_ranks(scores) for scores in score_lists]
    best = {i: min((r[i], index) for index, r in enumerate(ranks)) for i in ids}
    return sorted(fused.items(), key=lambda kv: (-kv[1], best[kv[0]]))
