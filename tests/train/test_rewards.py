"""Each reward on hand-built cases."""

from __future__ import annotations

import math

import pytest

from train.rewards import (
    make_attribute_reward,
    make_format_reward,
    make_length_reward,
    parse_stated_fields,
    query_has_text,
    reasoning_lengths,
    retrieval_rank_reward,
)

THINK_END, EMB = 5, 6


def test_retrieval_reward_is_one_at_rank_one_and_zero_at_last():
    rewards = retrieval_rank_reward(
        completions=["a", "b", "c", "d"], retrieval_rank=[1, 8, 2, None], num_candidates=[8, 8, 8, 8]
    )
    assert rewards[0] == 1.0
    assert rewards[1] == pytest.approx(0.0)
    assert rewards[2] == pytest.approx(1 - math.log(2) / math.log(8))
    assert rewards[3] is None


def test_retrieval_reward_with_a_single_candidate_is_one():
    assert retrieval_rank_reward(completions=["a"], retrieval_rank=[1], num_candidates=[1]) == [1.0]


def test_format_reward_wants_reasoning_then_think_end_then_emb():
    reward = make_format_reward(THINK_END, EMB)
    cases = [
        [1, 2, THINK_END, EMB],  # well formed
        [THINK_END, EMB],  # empty reasoning is still well formed
        [1, 2, THINK_END, 3],  # closes but never embeds
        [1, 2, 3],  # truncated
        [1, THINK_END, 2, THINK_END, EMB],  # closes twice
    ]
    assert reward(completion_ids=cases) == [1.0, 1.0, 0.5, 0.0, 0.5]


def test_length_reward_penalises_only_beyond_the_target():
    reward = make_length_reward(THINK_END, target_tokens=4)
    cases = [[1, 2, THINK_END, EMB], [1, 2, 3, 4, THINK_END, EMB], [1] * 6 + [THINK_END, EMB], [1] * 20]
    assert reward(completion_ids=cases) == [0.0, 0.0, -0.5, -1.0]


def test_length_reward_rejects_zero_target():
    with pytest.raises(ValueError, match="target_tokens"):
        make_length_reward(THINK_END, 0)


def test_reasoning_lengths_count_tokens_before_think_end():
    assert reasoning_lengths([[1, 2, THINK_END, EMB], [1, 2, 3]], THINK_END) == [2, 3]


def test_parse_stated_fields_keeps_the_first_statement_and_skips_parts_without_a_colon():
    assert parse_stated_fields(" audience: Men; junk; colour: Navy  Blue; audience: Women.") == {
        "audience": "Men",
        "colour": "Navy  Blue",
    }
    assert parse_stated_fields("") == {}


def test_attribute_reward_is_the_share_of_target_fields_stated_rightly(tiny_tokenizer):
    """Hand-built completions on the real tiny tokenizer: one attribute wrong, one missing, casing ignored, text after
    `</think>` ignored, a row without a target left out (None)."""
    think_end = tiny_tokenizer.convert_tokens_to_ids("</think>")
    emb = tiny_tokenizer.convert_tokens_to_ids("<emb>")

    def ids(text: str, close: bool = True) -> list[int]:
        tail = [think_end, emb] if close else []
        return tiny_tokenizer(text, add_special_tokens=False)["input_ids"] + tail

    target = "audience: Men; type: Shirts; colour: Navy Blue."
    reward = make_attribute_reward(tiny_tokenizer, think_end)
    rewards = reward(
        completion_ids=[
            ids("audience: Men; type: Shirts; colour: Navy Blue."),
            ids("audience: Men; type: Shirts; colour: Red."),  # colour wrong
            ids("type: shirts; audience: men."),  # colour missing, order and case free
            ids("audience: Women", close=False),  # never closes: all of it is the reasoning
            ids("season: Summer."),  # nothing the target states
            ids("audience: Men."),
        ],
        reasoning=[target, target, target, target, target, None],
    )
    assert rewards[:5] == pytest.approx([1.0, 2 / 3, 2 / 3, 0.0, 0.0])
    assert rewards[5] is None


def test_attribute_reward_without_a_reasoning_column_names_the_fix(tiny_tokenizer):
    reward = make_attribute_reward(tiny_tokenizer, tiny_tokenizer.convert_tokens_to_ids("</think>"))
    with pytest.raises(ValueError, match="needs a `reasoning` column"):
        reward(completion_ids=[[1, 2]])


def test_attribute_reward_leaves_photo_only_queries_out_only_when_asked(tiny_tokenizer):
    think_end = tiny_tokenizer.convert_tokens_to_ids("</think>")
    completion = tiny_tokenizer("audience: Men.", add_special_tokens=False)["input_ids"] + [think_end]
    queries = [{"image": "a.jpg"}, {"text": "men shirt", "image": "a.jpg"}, {"text": "men shirt"}, "men shirt"]
    targets = ["audience: Men."] * 4
    every = make_attribute_reward(tiny_tokenizer, think_end)
    assert every(completion_ids=[completion] * 4, reasoning=targets, query=queries) == [1.0] * 4
    text_only = make_attribute_reward(tiny_tokenizer, think_end, photo_queries=False)
    assert text_only(completion_ids=[completion] * 4, reasoning=targets, query=queries) == [None, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="needs the rows' `query` column"):
        text_only(completion_ids=[completion], reasoning=targets[:1])


def test_query_has_text():
    assert [query_has_text(q) for q in ("x", " ", {"text": ""}, {"text": None, "image": "a"}, {"text": "x"}, None)] == [
        True,
        False,
        False,
        False,
        True,
        False,
    ]
