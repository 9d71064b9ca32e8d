"""Our metrics against standard implementations: scikit-learn (fast) and ranx (slow: numba compiles on first use).

Runs are random score matrices without ties (so every library ranks them the same way) and hand-built rankings with
ties, given to the libraries in our tie-broken order. Our capped recall@k equals the standard recall@k exactly when a
query has at most k positives; `recall_uncapped@k` is the standard one everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.metrics import (
    accuracy,
    average_precision,
    macro_f1,
    mrr,
    ndcg_at_k,
    positive_ranks,
    recall_at_k,
    recall_uncapped_at_k,
)


def random_run(seed: int, queries: int = 40, candidates: int = 60, max_positives: int = 15):
    """(scores (Q, N) without ties, positives per query with 1..max_positives entries)."""
    rng = np.random.default_rng(seed)
    scores = rng.permutation(queries * candidates).reshape(queries, candidates).astype(float) / (queries * candidates)
    positives = [
        sorted(rng.choice(candidates, size=rng.integers(1, max_positives + 1), replace=False).tolist())
        for _ in range(queries)
    ]
    return scores, positives


def hand_built_run():
    """Ties, a positive ranked last, many positives, one positive: scores (3, 6), positives."""
    scores = np.array(
        [
            [0.5, 0.5, 0.5, 0.9, 0.1, 0.5],  # ties broken by index: 3, 0, 1, 2, 5, 4
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # all tied: index order
            [0.2, 0.8, 0.4, 0.6, 0.9, 0.1],
        ]
    )
    positives = [[2, 4], [5], [0, 1, 2, 3, 4]]
    return scores, positives


def tie_broken_scores(scores: np.ndarray) -> np.ndarray:
    """The same rankings as `positive_ranks` (ties to the lower index) as strictly decreasing scores."""
    order = np.lexsort((np.arange(scores.shape[1])[None, :].repeat(len(scores), 0), -scores), axis=1)
    strict = np.empty_like(scores)
    for row, ranking in enumerate(order):
        strict[row, ranking] = np.arange(scores.shape[1], 0, -1, dtype=float)
    return strict


def relevance(positives, candidates: int) -> np.ndarray:
    y = np.zeros((len(positives), candidates), dtype=int)
    for row, pos in enumerate(positives):
        y[row, pos] = 1
    return y


RUNS = {"random-0": random_run(0), "random-1": random_run(1, 25, 200, 40), "hand-built": hand_built_run()}


def test_tie_broken_scores_keep_our_ranks():
    scores, positives = hand_built_run()
    strict = tie_broken_scores(scores)
    for ours, theirs in zip(positive_ranks(scores, positives), positive_ranks(strict, positives), strict=True):
        assert ours.tolist() == theirs.tolist()
    assert positive_ranks(scores, positives)[0].tolist() == [4, 6]


@pytest.mark.parametrize("name", RUNS)
def test_ndcg_and_map_agree_with_scikit_learn(name):
    from sklearn.metrics import average_precision_score, ndcg_score

    scores, positives = RUNS[name]
    strict = tie_broken_scores(scores)
    ranks = positive_ranks(scores, positives)
    y = relevance(positives, scores.shape[1])
    for k in (1, 5, 10):
        assert ndcg_at_k(ranks, k) == pytest.approx(ndcg_score(y, strict, k=k), abs=1e-12)
    per_query_ap = [average_precision_score(y[row], strict[row]) for row in range(len(y))]
    assert average_precision(ranks) == pytest.approx(np.mean(per_query_ap), abs=1e-12)


@pytest.mark.parametrize("name", RUNS)
def test_recall_and_mrr_agree_with_a_direct_count(name):
    scores, positives = RUNS[name]
    strict = tie_broken_scores(scores)
    ranks = positive_ranks(scores, positives)
    top = np.argsort(-strict, axis=1)
    for k in (1, 5, 10):
        hits = [len(set(top[row, :k]) & set(pos)) for row, pos in enumerate(positives)]
        assert recall_uncapped_at_k(ranks, k) == pytest.approx(np.mean([h / len(p) for h, p in zip(hits, positives)]))
        assert recall_at_k(ranks, k) == pytest.approx(np.mean([h / min(k, len(p)) for h, p in zip(hits, positives)]))
    first = [min(list(top[row]).index(p) for p in pos) + 1 for row, pos in enumerate(positives)]
    assert mrr(ranks) == pytest.approx(np.mean([1 / r for r in first]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_accuracy_and_macro_f1_agree_with_scikit_learn(seed):
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(seed)
    classes = ["Men", "Women", "Boys", "Girls", "Unisex"]
    y_true = rng.choice(classes[:4], size=50).tolist()  # "Unisex" never gold
    y_pred = rng.choice(classes[1:], size=50).tolist()  # "Men" never predicted
    assert accuracy(y_true, y_pred) == pytest.approx(accuracy_score(y_true, y_pred))
    assert macro_f1(y_true, y_pred) == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    # a class of the label set that is neither gold nor predicted counts 0, as in sklearn with labels=...
    labels = classes + ["Kids"]
    assert macro_f1(y_true, y_pred, labels=labels) == pytest.approx(
        f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    )


def test_capped_recall_differs_from_the_standard_one_only_beyond_k_positives():
    ranks = [np.array([1, 2, 3, 4, 20])]  # 5 positives, 4 in the top 5, 1 in the top 1
    assert recall_at_k(ranks, 1) == 1.0 and recall_uncapped_at_k(ranks, 1) == pytest.approx(0.2)
    assert recall_at_k(ranks, 10) == recall_uncapped_at_k(ranks, 10) == pytest.approx(0.8)


@pytest.mark.slow
@pytest.mark.parametrize("name", RUNS)
def test_retrieval_metrics_agree_with_ranx(name):
    from ranx import Qrels, Run, evaluate

    scores, positives = RUNS[name]
    strict = tie_broken_scores(scores)
    ranks = positive_ranks(scores, positives)
    qrels = Qrels({f"q{row}": {f"d{p}": 1 for p in pos} for row, pos in enumerate(positives)})
    run = Run(
        {
            f"q{row}": {f"d{col}": float(strict[row, col]) for col in range(strict.shape[1])}
            for row in range(len(strict))
        }
    )
    theirs = evaluate(qrels, run, ["recall@1", "recall@5", "recall@10", "mrr", "ndcg@10", "map"], make_comparable=True)
    for k in (1, 5, 10):
        assert recall_uncapped_at_k(ranks, k) == pytest.approx(theirs[f"recall@{k}"], abs=1e-9)
        if all(len(p) <= k for p in positives):
            assert recall_at_k(ranks, k) == pytest.approx(theirs[f"recall@{k}"], abs=1e-9)
    assert mrr(ranks) == pytest.approx(theirs["mrr"], abs=1e-9)
    assert ndcg_at_k(ranks, 10) == pytest.approx(theirs["ndcg@10"], abs=1e-9)
    assert average_precision(ranks) == pytest.approx(theirs["map"], abs=1e-9)
