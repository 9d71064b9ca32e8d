"""Reward functions for stage 2 (GRPO), in TRL's signature `f(prompts, completions, completion_ids, **kwargs)`.

TRL passes every dataset column as a keyword argument (one value per completion); `Moon3GRPOTrainer` adds
`retrieval_rank` and `num_candidates` to each row before the rewards run, so the rewards stay plain functions of
their inputs and can be tested on hand-built cases. Weights come from `Moon3GRPOConfig` (TRL's `reward_weights`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence


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


def parse_stated_fields(text: str) -> dict[str, str]:
    """Field name -> stated value of reasoning written `name: value; name: value.`, the form of the stage-1 targets
    (`Moon3Processor.format_reasoning`). A part without `:` is ignored; a field stated twice keeps its first value.

    Example:
        >>> parse_stated_fields("audience: Men; type: Shirts; colour: Navy Blue.")
        {'audience': 'Men', 'type': 'Shirts', 'colour': 'Navy Blue'}
    """
    text = text.strip()
    if text.endswith("."):
        text = text[:-1]
    stated: dict[str, str] = {}
    for part in text.split(";"):
        name, colon, value = part.partition(":")
        name = name.strip()
        if colon and name and name not in stated:
            stated[name] = value.strip()
    return stated


def same_value(stated: str | None, gold: str) -> bool:
    """Whether a stated value names the gold one (case-insensitive, whitespace collapsed)."""
    if stated is None:
        return False
    return " ".join(stated.split()).casefold() == " ".join(gold.split()).casefold()


def query_has_text(query) -> bool:
    """Whether a training row's `query` holds text (a string, or a dict with a non-empty `text`); False for a
    photo-only query.

    Example:
        >>> query_has_text({"image": "a.jpg"}), query_has_text({"text": "red shirt", "image": "a.jpg"})
        (False, True)
    """
    if isinstance(query, str):
        return bool(query.strip())
    if isinstance(query, Mapping):
        return bool(str(query.get("text") or "").strip())
    return False


def make_attribute_reward(
    tokenizer, think_end_token_id: int, photo_queries: bool = True
) -> Callable[..., list[float | None]]:
    """The share of the row's reasoning target's fields (`name: value`, the dataset's `reasoning` column) that the
    completion's reasoning states with the same value; a field left out or stated wrongly counts as a miss, extra
    fields cost nothing. A row without a target gets `None` (TRL leaves it out of this reward's mean), and so does a
    photo-only query when `photo_queries` is False: where the photo features cannot tell a value, this reward pays
    most for the majority answer, and GRPO turns every photo's reasoning into it (docs/reasoning.md).

    The rank reward alone pays for whatever reasoning retrieves well, and run long it trades the stated attributes
    away (docs/reasoning.md); this reward keeps them right. The reasoning is the completion's text before
    `</think>` (all of it when it never closes), decoded without special tokens.

    Example (the target states 3 fields, the completion 2 of them rightly):
        `reasoning="audience: Men; type: Shirts; colour: Navy Blue."`, completion `audience: Men; type: Shirts;
        colour: Black.</think><emb>` -> 0.667
    """

    def attribute_reward(
        completion_ids: Sequence[Sequence[int]],
        reasoning: Sequence | None = None,
        query: Sequence | None = None,
        **kwargs,
    ):
        if reasoning is None:
            raise ValueError(
                "attribute_reward_weight > 0 needs a `reasoning` column (the stage-1 reasoning target) in the "
                "dataset: build it with `python -m train.data build-fashion`, or set attribute_reward_weight 0."
            )
        if not photo_queries and query is None:
            raise ValueError(
                "attribute_reward_photo_queries false needs the rows' `query` column to tell photo-only queries "
                "apart; pass the dataset's `query` column, or set attribute_reward_photo_queries true."
            )
        scored = [True] * len(reasoning) if photo_queries else [query_has_text(q) for q in query]
        rewards: list[float | None] = []
        for ids, target, score in zip(completion_ids, reasoning, scored, strict=True):
            wanted = parse_stated_fields(target) if target else {}
            if not wanted or not score:
                rewards.append(None)
                continue
            ids = list(ids)
            ids = ids[: ids.index(think_end_token_id)] if think_end_token_id in ids else ids
            stated = parse_stated_fields(tokenizer.decode(ids, skip_special_tokens=True))
            hits = sum(same_value(stated.get(name), value) for name, value in wanted.items())
            rewards.append(hits / len(wanted))
        return rewards

    return attribute_reward


def reasoning_lengths(completion_ids: Sequence[Sequence[int]], think_end_token_id: int) -> list[int]:
    """Reasoning tokens of each completion (before `</think>`, or all of it when it never closes)."""
    return [list(ids).index(think_end_token_id) if think_end_token_id in ids else len(ids) for ids in completion_ids]


def moon3_reward_funcs(
    think_end_token_id: int,
    emb_token_id: int,
    target_reasoning_tokens: int,
    attribute_tokenizer=None,
    attribute_photo_queries: bool = True,
) -> list[Callable]:
    """The rewards in the order of `Moon3GRPOConfig`'s weights: retrieval, format, length, and the attribute reward
    when `attribute_tokenizer` is given (`attribute_reward_weight > 0`; `attribute_photo_queries` as in
    `make_attribute_reward`)."""
    funcs = [
        retrieval_rank_reward,
        make_format_reward(think_end_token_id, emb_token_id),
        make_length_reward(think_end_token_id, target_reasoning_tokens),
    ]
    if attribute_tokenizer is not None:
        funcs.append(make_attribute_reward(attribute_tokenizer, think_end_token_id, attribute_photo_queries))
    return funcs
