"""Reward functions for stage 2 (GRPO), in TRL's signature `f(prompts, completions, completion_ids, **kwargs)`.

TRL passes every dataset column as a keyword argument (one value per completion); `Moon3GRPOTrainer` adds
`retrieval_rank` and `num_candidates` to each row before the rewards run, so the rewards stay plain functions of
their inputs and can be tested on hand-built cases. Weights come from `Moon3GRPOConfig` (TRL's `reward_weights`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence


def retrieval_rank_reward(
    completions: Sequence, retrieval_rank: Sequence[int | None], num_candidates: Sequence[int], **kwargs
) -> list[float | None]:
    """`1 - log(rank) / log(N)`: 1 when the positive is ranked first among N candidates, 0 when it is last.

    The rank is that of the query's positive product among the batch's candidates, scored with the embedding read
    at the completion's `<emb>` (so reasoning that retrieves better earns more). A row without a rank gets `None`
    (TRL leaves it out of that reward's mean).
    """
    rewards = []
    for rank, total in zip(retrieval_rank, num_candidates, strict=True):
        if rank is None:
            rewards.append(None)
        elif total <= 1:
            rewards.append(1.0)
        else:
            rewards.append(1.0 - math.log(rank) / math.log(total))
    return rewards


def make_format_reward(think_end_token_id: int, emb_token_id: int) -> Callable[..., list[float]]:
    """Reward 1.0 for a completion `reasoning </think><emb>` (one `</think>`, immediately followed by the final
    `<emb>`), 0.5 when `</think>` is there but the completion does not end with `</think><emb>`, else 0.0."""

    def format_reward(completion_ids: Sequence[Sequence[int]], **kwargs) -> list[float]:
        rewards = []
        for ids in completion_ids:
            ids = list(ids)
            closes = ids.count(think_end_token_id)
            if closes == 1 and ids[-2:] == [think_end_token_id, emb_token_id]:
                rewards.append(1.0)
            elif closes >= 1:
                rewards.append(0.5)
            else:
                rewards.append(0.0)
        return rewards

    return format_reward


def make_length_reward(think_end_token_id: int, target_tokens: int) -> Callable[..., list[float]]:
    """0 while the reasoning (tokens before `</think>`, or the whole completion without it) has at most
    `target_tokens` tokens; beyond that `-(n - target) / target`, floored at -1. It caps the cost of reasoning
    without rewarding empty reasoning."""
    if target_tokens < 1:
        raise ValueError(f"target_tokens must be >= 1, got {target_tokens}.")

    def length_reward(completion_ids: Sequence[Sequence[int]], **kwargs) -> list[float]:
        rewards = []
        for ids in completion_ids:
            ids = list(ids)
            length = ids.index(think_end_token_id) if think_end_token_id in ids else len(ids)
            rewards.append(max(-1.0, -max(0, length - target_tokens) / target_tokens))
        return rewards

    return length_reward


def reasoning_lengths(completion_ids: Sequence[Sequence[int]], think_end_token_id: int) -> list[int]:
    """Reasoning tokens of each completion (before `</think>`, or all of it when it never closes)."""
    return [list(ids).index(think_end_token_id) if think_end_token_id in ids else len(ids) for ids in completion_ids]


def moon3_reward_funcs(think_end_token_id: int, emb_token_id: int, target_reasoning_tokens: int) -> list[Callable]:
    """The three rewards in the order of `Moon3GRPOConfig`'s weights: retrieval, format, length."""
    return [
        retrieval_rank_reward,
        make_format_reward(think_end_token_id, emb_token_id),
        make_length_reward(think_end_token_id, target_reasoning_tokens),
    ]
