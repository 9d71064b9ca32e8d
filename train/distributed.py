"""Cross-process gathering for the contrastive loss.

One function, `gather_with_grad`, modelled on open_clip's `gather_features` and sentence-transformers'
`all_gather_with_grad`. The contrastive loss gathers the **document side** (positives and hard negatives) across
processes **with** gradient, so every process scores its own queries against every process's documents; the query
side stays local. Gradients that flow into another process's documents travel back through the all-gather's backward
(a reduce-scatter), so each document's embedding receives the gradient of every query that scored it.

Shapes: W world size, N documents per process, E embedding dim.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size_and_rank() -> tuple[int, int]:
    """(W, rank) of the default process group, or (1, 0) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gather `tensor` (Tensor[N, ...]) from every process, keeping the autograd graph of the local part.

    Every process must pass the same N. Returns `(gathered, offset)`: gathered is Tensor[W * N, ...] in rank order
    and `offset = rank * N` is where this process's rows start, i.e. what to add to local labels.
    With one process (or without torch.distributed) it returns `(tensor, 0)` unchanged.
    """
    world_size, rank = world_size_and_rank()
    if world_size == 1:
        return tensor, 0
    # torch.distributed.nn's all_gather is differentiable: its backward sums each slice's gradient back to its owner.
    from torch.distributed.nn.functional import all_gather

    gathered = torch.cat(all_gather(tensor.contiguous()), dim=0)  # (W * N, ...)
    return gathered, rank * tensor.shape[0]


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather a tensor that needs no gradient (keys, ids, detached embeddings): Tensor[N, ...] -> Tensor[W*N, ...]."""
    world_size, _ = world_size_and_rank()
    if world_size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)
