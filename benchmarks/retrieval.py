"""Chunked exact retrieval: the full (Q, N) score matrix is never held in memory.

Two operations, both exact and deterministic (ties go to the lower candidate index):
- :func:`chunked_positive_ranks` gives the rank of every positive in the full ranking, which is what the metrics
  need (mAP looks at the whole list). It scores `query_chunk` queries against all N candidates at a time, so peak
  memory is O(query_chunk * N), chosen so that block stays under `max_block_elements`.
- :func:`chunked_topk` returns the top k candidates per query, scoring blocks of (query_chunk, candidate_chunk)
  and merging running top-k lists, so memory is O(query_chunk * (candidate_chunk + k)) whatever N is. The torch
  backend is the reference; the faiss backend (``pip install faiss-cpu``) is used when asked for and installed.

Letters: Q queries, N candidates, E embedding dim, k results per query.

Example:
    >>> import numpy as np
    >>> q = np.eye(2, dtype=np.float32); g = np.eye(3, 2, dtype=np.float32)
    >>> chunked_topk(q, g, k=2)[1].tolist()
    [[0, 1], [1, 0]]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def _torch():
    import torch

    return torch


def block_topk(scores, k: int):
    """Top-k of each row of a torch block (q, c) with ties to the lower column; returns (values, indices) (q, k)."""
    torch = _torch()
    k = min(k, scores.shape[1])
    kth = torch.topk(scores, k, dim=1).values[:, -1:]  # (q, 1)
    greater = scores > kth  # (q, c)
    ties = scores == kth  # (q, c)
    # keep only the first (lowest-index) ties needed to fill k slots
    room = k - greater.sum(dim=1, keepdim=True)  # (q, 1)
    keep = greater | (ties & (torch.cumsum(ties, dim=1) <= room))  # (q, c), exactly k True per row
    indices = torch.nonzero(keep)[:, 1].reshape(scores.shape[0], k)  # (q, k), ascending index
    values = torch.gather(scores, 1, indices)  # (q, k)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices  # stable: lower index first on ties
    return torch.gather(values, 1, order), torch.gather(indices, 1, order)


def _merge(best_values, best_indices, values, indices, k: int):
    torch = _torch()
    # running results hold lower candidate indices than the new block, so a stable sort keeps ties by index
    all_values = torch.cat([best_values, values], dim=1)  # (q, k + k')
    all_indices = torch.cat([best_indices, indices], dim=1)  # (q, k + k')
    order = torch.sort(all_values, dim=1, descending=True, stable=True).indices[:, :k]  # (q, k)
    return torch.gather(all_values, 1, order), torch.gather(all_indices, 1, order)


def chunked_topk(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int = 10,
    query_chunk: int = 1024,
    candidate_chunk: int = 65536,
    backend: str = "torch",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product of `queries` (Q, E) against `gallery` (N, E), in blocks.

    Returns:
        (scores, indices), both (Q, min(k, N)), best first, ties by lower index.
    """
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries (Q, E) and gallery (N, E) must share E, got {queries.shape} and {gallery.shape}")
    if backend == "faiss":
        return _faiss_topk(queries, gallery, k, candidate_chunk)
    if backend != "torch":
        raise ValueError(f"backend must be 'torch' or 'faiss', got {backend!r}")
    torch = _torch()
    from tqdm.auto import tqdm

    k = min(k, gallery.shape[0])
    gallery_t = torch.from_numpy(np.ascontiguousarray(gallery, dtype=np.float32))  # (N, E)
    out_values, out_indices = [], []
    for start in tqdm(range(0, len(queries), query_chunk), desc="top-k", disable=not progress):
        q = torch.from_numpy(np.ascontiguousarray(queries[start : start + query_chunk], dtype=np.float32))  # (q, E)
        best_v = torch.empty(len(q), 0)
        best_i = torch.empty(len(q), 0, dtype=torch.long)
        for c0 in range(0, gallery_t.shape[0], candidate_chunk):
            block = q @ gallery_t[c0 : c0 + candidate_chunk].T  # (q, c)
            v, i = block_topk(block, k)  # (q, k')
            best_v, best_i = _merge(best_v, best_i, v, i + c0, k)
        out_values.append(best_v.numpy())
        out_indices.append(best_i.numpy())
    return np.concatenate(out_values), np.concatenate(out_indices)


def faiss_available() -> bool:
    """Whether `import faiss` works."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _faiss_topk(queries, gallery, k, candidate_chunk):
    try:
        import faiss
    except ImportError as e:
        raise ImportError("backend='faiss' needs faiss: pip install faiss-cpu, or use backend='torch'") from e
    torch = _torch()
    k = min(k, gallery.shape[0])
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    best_v = torch.empty(len(queries), 0)
    best_i = torch.empty(len(queries), 0, dtype=torch.long)
    for c0 in range(0, gallery.shape[0], candidate_chunk):
        index = faiss.IndexFlatIP(gallery.shape[1])
        index.add(np.ascontiguousarray(gallery[c0 : c0 + candidate_chunk], dtype=np.float32))
        v, i = index.search(queries, min(k, index.ntotal))  # (Q, k')
        v, i = torch.from_numpy(v), torch.from_numpy(i).long()
        # faiss does not promise an order among equal scores: re-sort each block by (score desc, index asc)
        by_index = torch.sort(i, dim=1).indices
        v, i = torch.gather(v, 1, by_index), torch.gather(i, 1, by_index)
        order = torch.sort(v, dim=1, descending=True, stable=True).indices
        best_v, best_i = _merge(best_v, best_i, torch.gather(v, 1, order), torch.gather(i, 1, order) + c0, k)
    return best_v.numpy(), best_i.numpy()


def ranks_from_blocks(
    blocks: Iterator[tuple[int, np.ndarray]], positives: Sequence[Sequence[int]]
) -> list[np.ndarray]:
    """Positive ranks from score blocks `(start, scores (q, N))` covering the queries in order."""
    from .metrics import positive_ranks

    ranks: list[np.ndarray] = []
    for start, block in blocks:
        ranks.extend(positive_ranks(block, positives[start : start + len(block)]))
    if len(ranks) != len(positives):
        raise ValueError(f"score blocks covered {len(ranks)} queries, expected {len(positives)}")
    return ranks


def dense_score_blocks(
    queries: np.ndarray, gallery: np.ndarray, max_block_elements: int = 1 << 24, progress: bool = False
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield `(start, queries[start:start+q] @ gallery.T)` blocks of at most `max_block_elements` scores."""
    from tqdm.auto import tqdm

    query_chunk = max(1, max_block_elements // max(1, gallery.shape[0]))
    for start in tqdm(range(0, len(queries), query_chunk), desc="scoring", disable=not progress):
        yield start, queries[start : start + query_chunk] @ gallery.T  # (q, N)


def chunked_positive_ranks(
    queries: np.ndarray,
    gallery: np.ndarray,
    positives: Sequence[Sequence[int]],
    max_block_elements: int = 1 << 24,
    progress: bool = False,
) -> list[np.ndarray]:
    """Exact ranks of positives, equal to `positive_ranks(queries @ gallery.T, positives)` in bounded memory."""
    return ranks_from_blocks(dense_score_blocks(queries, gallery, max_block_elements, progress), positives)
