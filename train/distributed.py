"""Cross-process helpers: gathering for the contrastive loss, and keeping every process's collectives in step.

One function, `gather_with_grad`, modelled on open_clip's `gather_features` and sentence-transformers'
`all_gather_with_grad`. The contrastive loss gathers the **document side** (positives and hard negatives) across
processes **with** gradient, so every process scores its own queries against every process's documents; the query
side stays local. Gradients that flow into another process's documents travel back through the all-gather's backward
(a reduce-scatter), so each document's embedding receives the gradient of every query that scored it.

`max_across_processes` and `backward_deferring_sync` serve gradient caching (stage 1): every process must run the same
number of forwards and backwards (under DeepSpeed ZeRO-3 each forward all-gathers parameters, under ZeRO-2/3 each
backward reduce-scatters gradients), and only the last chunk's backward may end the accumulation.

Shapes: W world size, N documents per process, E embedding dim.
"""

from __future__ import annotations

import contextlib

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


def max_across_processes(value: int) -> int:
    """The largest `value` over all processes (the value itself with one process)."""
    world_size, _ = world_size_and_rank()
    if world_size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.long)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def is_deepspeed_engine(model) -> bool:
    """Whether `model` is a DeepSpeed engine (duck-typed: DeepSpeed need not be installed)."""
    return callable(getattr(model, "set_gradient_accumulation_boundary", None)) and callable(
        getattr(model, "zero_optimization_stage", None)
    )


def backward_deferring_sync(model, loss: torch.Tensor, backward) -> None:
    """Backward of a micro-step that is not the last before the optimizer step (a gradient-caching chunk but the
    last): gradients accumulate and the step is left to the last one.

    - DDP (`no_sync` available): `backward(loss)` inside `model.no_sync()`, so only the last backward all-reduces.
    - DeepSpeed engine: `no_sync` asserts under ZeRO-2/3 (they reduce-scatter gradients in every backward, which is
      linear, so the sum over chunks is still the full-batch gradient). The engine is told this micro-step is not an
      accumulation boundary and its own `backward` runs (no `step`); `scale_wrt_gas=False` because the caller already
      scales by the accumulation steps, as `transformers.Trainer` does under DeepSpeed.
    - otherwise: `backward(loss)`.

    `backward` is the caller's usual backward (`accelerator.backward`).
    """
    if is_deepspeed_engine(model):
        model.set_gradient_accumulation_boundary(False)
        model.backward(loss, scale_wrt_gas=False)
        return
    with model.no_sync() if callable(getattr(model, "no_sync", None)) else contextlib.nullcontext():
        backward(loss)
