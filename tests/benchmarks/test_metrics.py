"""Metrics against hand-computed cases, including ties."""

import math

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
    retrieval_metrics,
)


def test_positive_ranks_break_ties_by_lower_index():
    scores = np.array([[0.5, 0.5, 0.5, 0.9]])
    # order: 3 (0.9), then 0, 1, 2 by index
    assert positive_ranks(scores, [[2]])[0].tolist() == [4]
    assert positive_ranks(scores, [[0, 1]])[0].tolist() == [2, 3]


def test_all_equal_scores_rank_in_index_order():
    assert positive_ranks(np.zeros((1, 5)), [[4, 0]])[0].tolist() == [1, 5]


def test_positive_ranks_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="Q = len"):
        positive_ranks(np.zeros((2, 3)), [[0]])


def test_recall_is_capped_by_number_of_positives():
    ranks = [np.array([1, 3]), np.array([2])]
    # query 1: top-1 has 1 of min(1, 2) -> 1; query 2: 0 -> mean 0.5
    assert recall_at_k(ranks, 1) == pytest.approx(0.5)
    # top-5: query 1 has 2/2, query 2 has 1/1
    assert recall_at_k(ranks, 5) == pytest.approx(1.0)
    assert recall_at_k([np.array([1, 7])], 5) == pytest.approx(0.5)


def test_mrr_uses_first_positive():
    assert mrr([np.array([3, 4]), np.array([1])]) == pytest.approx((1 / 3 + 1) / 2)


def test_ndcg_hand_computed():
    # positives at ranks 2 and 4 out of 2 relevant: DCG = 1/log2(3) + 1/log2(5); IDCG = 1 + 1/log2(3)
    expected = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k([np.array([2, 4])], 10) == pytest.approx(expected)
    assert ndcg_at_k([np.array([11])], 10) == 0.0


def test_average_precision_hand_computed():
    # ranks 1, 3, 6: precisions 1/1, 2/3, 3/6
    assert average_precision([np.array([1, 3, 6])]) == pytest.approx((1 + 2 / 3 + 0.5) / 3)


def test_perfect_ranking_scores_one_everywhere():
    ranks = positive_ranks(np.eye(4), [[0], [1], [2], [3]])
    assert all(v == pytest.approx(1.0) for v in retrieval_metrics(ranks).values())


def test_accuracy_and_macro_f1_hand_computed():
    y_true = ["a", "a", "b", "c"]
    y_pred = ["a", "b", "b", "b"]
    assert accuracy(y_true, y_pred) == pytest.approx(0.5)
    # F1 a = 2*1/(2+0+1)=2/3, b = 2*1/(2+2+0)=1/2, c = 0
    assert macro_f1(y_true, y_pred) == pytest.approx((2 / 3 + 0.5 + 0) / 3)
    # an extra listed class never seen counts as 0
    assert macro_f1(y_true, y_pred, labels=["a", "b", "c", "d"]) == pytest.approx((2 / 3 + 0.5) / 4)


def test_accuracy_rejects_length_mismatch():
    with pytest.raises(ValueError, match="equal length"):
        accuracy(["a"], ["a", "b"])
