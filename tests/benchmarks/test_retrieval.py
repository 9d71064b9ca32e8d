"""Chunked retrieval equals the full-matrix computation, ties included."""

import numpy as np
import pytest

from benchmarks.metrics import positive_ranks
from benchmarks.retrieval import chunked_positive_ranks, chunked_topk, faiss_available


def _integer_vectors(seed, n, dim=6):
    # small integers make many exact ties and make every dot product exact in float32
    return np.random.default_rng(seed).integers(-2, 3, (n, dim)).astype(np.float32)


def _full_topk(queries, gallery, k):
    scores = queries @ gallery.T
    order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores), axis=1)
    return order[:, :k]


@pytest.mark.parametrize("query_chunk,candidate_chunk", [(7, 11), (1, 1000), (64, 3)])
def test_chunked_topk_equals_full_sort(query_chunk, candidate_chunk):
    queries, gallery = _integer_vectors(0, 40), _integer_vectors(1, 200)
    _, indices = chunked_topk(queries, gallery, k=9, query_chunk=query_chunk, candidate_chunk=candidate_chunk)
    assert (indices == _full_topk(queries, gallery, 9)).all()


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
def test_faiss_topk_equals_torch_topk():
    queries, gallery = _integer_vectors(2, 30), _integer_vectors(3, 150)
    _, torch_indices = chunked_topk(queries, gallery, k=5, candidate_chunk=40)
    _, faiss_indices = chunked_topk(queries, gallery, k=5, candidate_chunk=40, backend="faiss")
    assert (torch_indices == faiss_indices).all()


def test_chunked_positive_ranks_equal_full_matrix():
    queries, gallery = _integer_vectors(4, 33), _integer_vectors(5, 120)
    positives = [[i % 120, (i * 7) % 120] for i in range(33)]
    full = positive_ranks(queries @ gallery.T, positives)
    chunked = chunked_positive_ranks(queries, gallery, positives, max_block_elements=250)  # 2 queries per block
    assert all((a == b).all() for a, b in zip(full, chunked))


def test_topk_larger_than_gallery_returns_everything():
    queries, gallery = _integer_vectors(6, 3), _integer_vectors(7, 4)
    values, indices = chunked_topk(queries, gallery, k=10)
    assert indices.shape == (3, 4) and (np.sort(indices, axis=1) == np.arange(4)).all()


def test_topk_rejects_dimension_mismatch():
    with pytest.raises(ValueError, match="share E"):
        chunked_topk(np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32))
