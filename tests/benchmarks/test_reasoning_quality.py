"""benchmarks.reasoning_quality on hand-built cases with known answers, and end to end on a tiny checkpoint."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
import torch

from benchmarks.reasoning_quality import (
    attribute_hits,
    embed_after_reasoning,
    majority_rates,
    parse_reasoning,
    quality_of_kind,
    sensitivity,
    swap_colour,
    topk_colour_counts,
    trim_completion,
)

GOLD = {"gender": "Men", "baseColour": "Navy Blue", "articleType": "Shirts", "usage": "Casual", "season": "Fall"}


def test_parse_reads_the_stage1_target_format():
    from train.fashion import fashion_reasoning

    target = fashion_reasoning({"gender": "Men", "masterCategory": "Apparel", **GOLD})
    assert parse_reasoning(target) == {**GOLD, "masterCategory": "Apparel"}


def test_a_wrong_colour_and_a_missing_season_are_misses_the_rest_hits():
    stated = parse_reasoning("audience: Men; type: Shirts; colour: Red; usage: casual.")
    assert attribute_hits(stated, GOLD) == {
        "gender": True,
        "baseColour": False,  # wrong value
        "articleType": True,
        "usage": True,  # case does not matter
        "season": False,  # not stated
    }


def test_malformed_reasoning_states_nothing_it_cannot_parse():
    assert parse_reasoning("audience: Apparel; sub-category") == {"gender": "Apparel"}
    assert parse_reasoning("audienceaudience;;;;") == {}
    # a field stated twice: the first statement counts
    assert parse_reasoning("colour: Red; colour: Blue") == {"baseColour": "Red"}


def test_majority_rate_counts_only_items_with_a_gold_value():
    rates = majority_rates([{"gender": "Men"}, {"gender": "Men"}, {"gender": "Women"}, {"usage": "Casual"}])
    assert rates["gender"] == {"value": "Men", "rate": pytest.approx(2 / 3)}
    assert rates["usage"] == {"value": "Casual", "rate": 1.0}
    assert "season" not in rates


def test_swap_colour_changes_only_the_colour_value():
    assert swap_colour("audience: Men; colour: Navy Blue.", "Red") == "audience: Men; colour: Red."
    assert swap_colour("audience: Men; colour: Navy Blue; usage: Casual.", "Red") == (
        "audience: Men; colour: Red; usage: Casual."
    )
    assert swap_colour("audience: Men; type: Shirts.", "Red") is None


def test_completion_quality_on_hand_built_ids(tiny_tokenizer):
    """Three completions with known answers: well formed with a colour error, closed but no <emb>, never closed."""
    tokenizer = tiny_tokenizer
    think_end, emb = (tokenizer.convert_tokens_to_ids(t) for t in ("</think>", "<emb>"))
    config = SimpleNamespace(think_end_token_id=think_end, emb_token_id=emb)

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    reasoning = ids("audience: Men; type: Shirts; colour: Red; season: Fall; usage: Casual.")
    completions = [
        reasoning + [think_end, emb],  # well formed, colour wrong
        reasoning + [think_end] + ids(" more"),  # closed, but does not end with </think><emb>
        ids("audience: Men;") * 3,  # never closes (ran out of tokens)
    ]
    summary, records = quality_of_kind(completions, [GOLD] * 3, SimpleNamespace(tokenizer=tokenizer), config)
    assert [r["well_formed"] for r in records] == [True, False, False]
    assert [r["format_reward"] for r in records] == [1.0, 0.5, 0.0]
    assert summary["well_formed"] == pytest.approx(1 / 3)
    assert summary["closes_think"] == pytest.approx(2 / 3)
    assert records[0]["hits"] == {
        "gender": True,
        "baseColour": False,
        "articleType": True,
        "usage": True,
        "season": True,
    }
    assert summary["accuracy"]["gender"] == 1.0  # every completion states audience: Men
    assert summary["accuracy"]["baseColour"] == 0.0
    assert summary["accuracy"]["articleType"] == pytest.approx(2 / 3)  # the third never states a type
    assert summary["mean_reasoning_tokens"] == pytest.approx((2 * len(reasoning) + len(completions[2])) / 3)


def test_trim_completion_cuts_after_the_first_emb():
    assert trim_completion([4, 8, 9, 0, 0], emb_token_id=9, pad_token_id=0) == [4, 8, 9]
    assert trim_completion([4, 4, 4], emb_token_id=9, pad_token_id=0) == [4, 4, 4]


# --------------------------------------------------------------------------- sensitivity on hand-built embedders

COLOURS = ["Red", "Blue", "Black", "Green"]


def _gallery(per_colour: int = 12):
    """Gallery rows: one-hot colour + a small item-specific part; row i's colour is COLOURS[i % 4]."""
    colours = [COLOURS[i % len(COLOURS)] for i in range(per_colour * len(COLOURS))]
    noise = torch.randn(len(colours), 8, generator=torch.Generator().manual_seed(0)) * 0.1
    onehot = torch.nn.functional.one_hot(torch.tensor([COLOURS.index(c) for c in colours]), len(COLOURS)).float()
    return torch.nn.functional.normalize(torch.cat([onehot, noise], dim=1), dim=1), colours


def _reading_embedder(item_parts):
    """An embedder whose vector is the stated colour's one-hot plus the item's own part: it reads the reasoning."""

    def embed(indices, texts):
        rows = []
        for i, text in zip(indices, texts, strict=True):
            colour = parse_reasoning(text).get("baseColour")
            onehot = torch.zeros(len(COLOURS))
            if colour in COLOURS:
                onehot[COLOURS.index(colour)] = 1.0
            rows.append(torch.cat([onehot, item_parts[i]]))
        return torch.nn.functional.normalize(torch.stack(rows), dim=1)

    return embed


def _blind_embedder(item_parts):
    """An embedder that ignores the reasoning: the vector depends on the item only."""

    def embed(indices, texts):
        rows = [torch.cat([torch.ones(len(COLOURS)), item_parts[i]]) for i in indices]
        return torch.nn.functional.normalize(torch.stack(rows), dim=1)

    return embed


def test_sensitivity_of_an_embedder_that_reads_the_reasoning():
    gallery, colours = _gallery()
    reasonings = [f"audience: Men; colour: {c}; usage: Casual." for c in colours]
    parts = gallery[:, len(COLOURS) :]
    result = sensitivity(_reading_embedder(parts), reasonings, gallery, colours, COLOURS, seed=0)
    assert result["n_swapped"] == len(colours)
    assert result["swapped_colour_rises"] == 1.0  # every top 10 fills with the swapped-in colour
    assert result["swapped_colour_in_top10_swapped"] == 10.0
    assert result["swapped_colour_in_top10_own"] == 0.0
    assert result["cos_own_swapped"] < 0.2
    assert result["cos_own_other"] < 0.9  # another item's reasoning often names another colour


def test_sensitivity_of_an_embedder_blind_to_the_reasoning():
    gallery, colours = _gallery()
    reasonings = [f"audience: Men; colour: {c}; usage: Casual." for c in colours]
    result = sensitivity(_blind_embedder(gallery[:, len(COLOURS) :]), reasonings, gallery, colours, COLOURS, seed=0)
    assert result["cos_own_other"] == pytest.approx(1.0)
    assert result["cos_own_swapped"] == pytest.approx(1.0)
    assert result["swapped_colour_rises"] == 0.0


def test_reasoning_without_a_colour_cannot_be_swapped():
    gallery, colours = _gallery(per_colour=3)
    reasonings = ["audience: Men; type: Shirts."] * len(colours)  # all the same: no 'other' reasoning either
    result = sensitivity(_blind_embedder(gallery[:, len(COLOURS) :]), reasonings, gallery, colours, COLOURS, seed=0)
    assert result["n_swapped"] == 0 and result["cos_own_swapped"] is None
    assert result["n_other"] == 0 and result["cos_own_other"] is None


def test_topk_colour_counts_leaves_the_own_product_out():
    gallery = torch.eye(3)
    counts = topk_colour_counts(gallery.clone(), gallery, ["Red", "Red", "Blue"], [0, 1, 2], ["Red"] * 3, k=1)
    # each query's best match is itself; left out, ties go to the lowest other index
    assert counts == [1, 1, 1]


# --------------------------------------------------------------------------- teacher-forced embedding, real model


def _queries():
    return ["men navy blue shirts", "women red dress"]


def test_teacher_forced_vector_of_a_random_model_depends_on_the_reasoning(tiny_tokenizer):
    from tests.conftest import build_tiny

    model, processor = build_tiny(tiny_tokenizer, family="qwen3_vl", seed=1)
    own = ["audience: Men; colour: Navy Blue.", "audience: Women; colour: Red."]
    swapped = ["audience: Men; colour: Red.", "audience: Women; colour: Navy Blue."]
    a = embed_after_reasoning(model, processor, "query", _queries(), own, 8, lambda x: x)
    c = embed_after_reasoning(model, processor, "query", _queries(), swapped, 8, lambda x: x)
    assert a.shape == (2, model.config.embedding_dim)
    assert torch.allclose(a.norm(dim=1), torch.ones(2), atol=1e-5)
    assert ((a * c).sum(dim=1) < 0.9999).all()
    # the same reasoning gives the same vector, batched or alone (left padding changes nothing)
    alone = embed_after_reasoning(model, processor, "query", _queries()[1:], own[1:], 1, lambda x: x)
    assert torch.allclose(alone[0], a[1], atol=1e-4)


def test_teacher_forced_vector_of_a_model_that_reads_only_the_prompt(tiny_tokenizer):
    """Final norm zeroed: the <emb> state is 0 whatever came before; only the fusion module, which reads the raw user
    turn, moves the vector. Such a model embeds each query differently but ignores the reasoning."""
    from tests.conftest import build_tiny

    model, processor = build_tiny(tiny_tokenizer, family="qwen3_vl", seed=1)
    with torch.no_grad():
        model.backbone.model.language_model.norm.weight.zero_()
        torch.nn.init.normal_(model.fusion.out_proj.weight, std=0.5, generator=torch.Generator().manual_seed(0))
    own = ["audience: Men; colour: Navy Blue.", "audience: Women; colour: Red."]
    swapped = ["audience: Men; colour: Red; type: Dresses.", "audience: Women; colour: Navy Blue."]
    a = embed_after_reasoning(model, processor, "query", _queries(), own, 8, lambda x: x)
    c = embed_after_reasoning(model, processor, "query", _queries(), swapped, 8, lambda x: x)
    assert torch.allclose((a * c).sum(dim=1), torch.ones(2), atol=1e-5)
    assert float(a[0] @ a[1]) < 0.999  # the two queries still differ


@pytest.mark.slow
def test_command_writes_results_on_a_tiny_checkpoint(tiny_checkpoint, tiny_fashion, tmp_path):
    from benchmarks.reasoning_quality import KINDS, main

    out = tmp_path / "out"
    results = main(
        ["--model", str(tiny_checkpoint), "--data", str(tiny_fashion), "--out", str(out), "--limit", "6",
         "--no-progress", "--max-new-tokens", "6"]
    )  # fmt: skip
    saved = json.loads((out / "results.json").read_text())
    assert saved["quality"] == json.loads(json.dumps(results["quality"]))
    assert set(saved["quality"]) == set(KINDS)
    for row in saved["quality"].values():
        assert row["n"] == 6 and 0.0 <= row["well_formed"] <= 1.0
        assert set(row["accuracy"]) == {"gender", "baseColour", "articleType", "usage", "season"}
    assert set(saved["sensitivity"]) == {"generated", "gold"}
    gold = saved["sensitivity"]["gold"]["title"]
    assert gold["n_swapped"] == 6 and -1.0 <= gold["cos_own_swapped"] <= 1.0
    lines = (out / "completions.jsonl").read_text().splitlines()
    assert len(lines) == 6 * len(KINDS)
    assert "| photo+title | 6 |" in (out / "results.md").read_text()


def test_bad_arguments_are_refused(tiny_fashion):
    from benchmarks.data_format import load_bench_data
    from benchmarks.reasoning_quality import evaluate

    data = load_bench_data(tiny_fashion)
    with pytest.raises(ValueError, match="--limit"):
        evaluate(None, None, data, limit=-1)
    with pytest.raises(ValueError, match="--batch-size"):
        evaluate(None, None, data, batch_size=0)


def test_pick_other_never_picks_the_item_itself():
    from benchmarks.reasoning_quality import pick_other

    rng = random.Random(0)
    texts = ["a", "b", "a", "c"]
    for index in range(4):
        other = pick_other(index, texts, rng)
        assert other != index and texts[other] != texts[index]


def test_teacher_forced_scoring_on_hand_built_logits(tiny_tokenizer):
    """Logits that predict every target token but `<emb>`: field name and separator right, `<emb>` wrong."""
    from benchmarks.reasoning_quality import _next_token_hits, teacher_forced_summary

    tokenizer = tiny_tokenizer
    think, think_end, emb = (tokenizer.convert_tokens_to_ids(t) for t in ("<think>", "</think>", "<emb>"))
    field = tokenizer("audience", add_special_tokens=False)["input_ids"]
    colon = tokenizer.convert_tokens_to_ids(":")
    ids = [think, think, *field, colon, think_end, emb]  # the last <think> opens the target
    input_ids = torch.tensor([ids])
    logits = torch.zeros(1, len(ids), len(tokenizer))
    for position in range(len(ids) - 1):
        logits[0, position, ids[position + 1]] = 10.0
    logits[0, len(ids) - 2, emb] = -10.0  # after </think> the model does not predict <emb>
    hits = _next_token_hits(logits, input_ids, think)
    expected = [(token, True) for token in field] + [(colon, True), (think_end, True), (emb, False)]
    assert [(token, right) for token, right, _ in hits[0]] == expected
    config = SimpleNamespace(think_end_token_id=think_end, emb_token_id=emb)
    summary = teacher_forced_summary(hits, tokenizer, config)
    assert summary["accuracy"] == {"</think>": 1.0, "<emb>": 0.0, "field name": 1.0, "separator": 1.0}
    assert summary["exact"] == 0.0
    assert summary["mean_nll"] > 0
