"""Retrieval and classification metrics as pure functions (no I/O, no model).

Shapes: Q queries, N candidates. Retrieval metrics take, for each query, the 1-based ranks of its positives in the
full ranking of all N candidates. Ties are broken deterministically: among equal scores the candidate with the
lower index ranks first, so rank(p) = #{j: s_j > s_p} + #{j < p: s_j == s_p} + 1 (see :func:`positive_ranks`).

Definitions (binary relevance, R = number of positives of a query):
- recall@k  = |positives in the top k| / min(k, R)  (capped recall, as BEIR's R_cap; = hit rate when R = 1)
- recall_uncapped@k = |positives in the top k| / R  (the standard recall@k of ranx, pytrec_eval/trec_eval and
  MTEB; equal to ours when R <= k, lower when R > k)
- MRR       = 1 / rank of the first positive
- nDCG@k    = sum_{positives with rank <= k} 1/log2(rank+1) / sum_{i=1..min(k,R)} 1/log2(i+1)
- AP        = mean over positives (sorted by rank) of (i / rank_i); mAP = mean over queries (full ranking, no cut-off)
Each metric returns the mean over queries. accuracy and macro-F1 (sklearn's definition: F1 per class, averaged
over the classes given or else those present in y_true or y_pred; a class with no prediction and no gold has F1 0).

Example:
    >>> import numpy as np
    >>> ranks = positive_ranks(np.array([[0.9, 0.1, 0.5]]), [[2]])
    >>> ranks, recall_at_k(ranks, 1), mrr(ranks)
    ([array([2])], 0.0, 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def positive_ranks(scores: np.ndarray, positives: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """1-based rank of each positive in each row of `scores` (Q, N), ties broken by lower index; sorted ascending.

    Example:
        >>> positive_ranks(np.array([[1.0, 1.0, 1.0]]), [[1, 2]])
        [array([2, 3])]
    """
    if scores.ndim != 2 or len(positives) != scores.shape[0]:
        raise ValueError(f"scores must be (Q, N) with Q = len(positives) = {len(positives)}, got {scores.shape}")
    columns = np.arange(scores.shape[1])
    ranks = []
    for row, pos in zip(scores, positives):
        pos = np.asarray(pos, dtype=np.int64)
        s_pos = row[pos][:, None]  # (P, 1)
        better = (row[None, :] > s_pos) | ((row[None, :] == s_pos) & (columns[None, :] < pos[:, None]))  # (P, N)
        ranks.append(np.sort(better.sum(axis=1) + 1))
    return ranks


def recall_at_k(ranks: Sequence[np.ndarray], k: int) -> float:
    """Mean capped recall@k: positives within the top k over min(k, number of positives)."""
    return float(np.mean([np.sum(r <= k) / min(k, len(r)) for r in ranks]))


def recall_uncapped_at_k(ranks: Sequence[np.ndarray], k: int) -> float:
    """Mean standard recall@k (ranx / trec_eval): positives within the top k over the number of positives."""
    return float(np.mean([np.sum(r <= k) / len(r) for r in ranks]))


def mrr(ranks: Sequence[np.ndarray]) -> float:
    """Mean reciprocal rank of the first positive."""
    return float(np.mean([1.0 / np.min(r) for r in ranks]))


def ndcg_at_k(ranks: Sequence[np.ndarray], k: int) -> float:
    """Mean binary nDCG@k."""
    values = []
    for r in ranks:
        dcg = np.sum(1.0 / np.log2(r[r <= k] + 1.0))
        ideal = np.sum(1.0 / np.log2(np.arange(1, min(k, len(r)) + 1) + 1.0))
        values.append(dcg / ideal)
    return float(np.mean(values))


def average_precision(ranks: Sequence[np.ndarray]) -> float:
    """Mean average precision over the full ranking (mAP)."""
    return float(np.mean([np.mean(np.arange(1, len(r) + 1) / np.sort(r)) for r in ranks]))


def accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    """Fraction of predictions equal to the gold label."""
    if len(y_true) != len(y_pred) or not len(y_true):
        raise ValueError(f"y_true and y_pred must be non-empty and of equal length, got {len(y_true)}, {len(y_pred)}")
    return float(np.mean([t == p for t, p in zip(y_true, y_pred)]))


def macro_f1(y_true: Sequence, y_pred: Sequence, labels: Sequence | None = None) -> float:
    """Unweighted mean of per-class F1 over `labels` (default: classes present in y_true or y_pred)."""
    if len(y_true) != len(y_pred) or not len(y_true):
        raise ValueError(f"y_true and y_pred must be non-empty and of equal length, got {len(y_true)}, {len(y_pred)}")
    labels = sorted(set(y_true) | set(y_pred)) if labels is None else list(labels)
    scores = []
    for c in labels:
        tp = sum(t == c and p == c for t, p in zip(y_true, y_pred))
        fp = sum(t != c and p == c for t, p in zip(y_true, y_pred))
        fn = sum(t == c and p != c for t, p in zip(y_true, y_pred))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def retrieval_metrics(ranks: Sequence[np.ndarray], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Capped recall@k and standard recall_uncapped@k for each k, MRR, nDCG@10 and mAP."""
    out = {f"recall@{k}": recall_at_k(ranks, k) for k in ks}
    out.update({f"recall_uncapped@{k}": recall_uncapped_at_k(ranks, k) for k in ks})
    out.update({"mrr": mrr(ranks), "ndcg@10": ndcg_at_k(ranks, 10), "map": average_precision(ranks)})
    return out
