"""Moon3Model: zero-initialised modules, batch invariance, reasoning mode over the cache, generation, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import build_tiny


def activate_new_modules(model, seed: int = 1):
    """Give fusion and FIRE non-zero weights so that tests exercise them (fresh, they are exact no-ops)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(("fusion.", "fire.")):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model


def mixed_queries(images):
    """Eight queries: text only, image only, both; images of different sizes and modes; texts of different lengths."""
    return [
        "men navy blue casual shirts",
        {"image": images["red"]},
        {"text": "red running shoes for women", "image": images["wide"]},
        "watch",
        {"text": "green bag", "image": images["rgba"]},
        {"image": images["gray"]},
        "Manchester United Men Solid Black Track Pants for the gym and casual weekend wear",
        {"text": "two images", "images": [images["red"], images["wide"]]},
    ]


def embed(model, processor, queries, **kwargs):
    batch = processor(queries=queries, **kwargs)
    with torch.no_grad():
        return model(**batch).embeddings


def test_fresh_fusion_and_fire_embed_exactly_like_the_backbone(tiny_tokenizer, product_images):
    with_modules, processor = build_tiny(tiny_tokenizer, seed=3)
    without_modules, _ = build_tiny(tiny_tokenizer, seed=3, use_fusion=False, use_fire=False)
    without_modules.load_state_dict(with_modules.state_dict(), strict=False)
    queries = mixed_queries(product_images)
    assert torch.equal(embed(with_modules, processor, queries), embed(without_modules, processor, queries))


def test_activated_modules_change_the_embedding(tiny_tokenizer, product_images):
    model, processor = build_tiny(tiny_tokenizer)
    queries = mixed_queries(product_images)
    before = embed(model, processor, queries)
    after = embed(activate_new_modules(model), processor, queries)
    assert (before - after).abs().max() > 1e-3


def test_embeddings_are_unit_length_with_configured_size(tiny_model, product_images):
    model, processor = tiny_model
    embeddings = embed(model, processor, mixed_queries(product_images))
    assert embeddings.shape == (8, model.config.embedding_dim)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(8))


def test_item_alone_equals_item_in_padded_mixed_batch(tiny_model, product_images):
    model, processor = tiny_model
    activate_new_modules(model)
    queries = mixed_queries(product_images)
    batched = embed(model, processor, queries)
    for index, query in enumerate(queries):
        alone = embed(model, processor, [query])
        torch.testing.assert_close(alone[0], batched[index], atol=1e-5, rtol=0)


def test_products_alone_equal_products_in_batch(tiny_model, product_images):
    model, processor = tiny_model
    activate_new_modules(model)
    products = [
        {
            "title": "Navy shirt",
            "attributes": {"colour": "Navy Blue", "usage": "Casual"},
            "images": [product_images["red"]],
        },
        {"title": "Red dress"},
        {"images": [product_images["wide"], product_images["gray"]]},
        {"title": "Black track pants", "description": "Soft cotton, elastic waist, two pockets and a zip."},
    ]
    batch = processor(products=products)
    with torch.no_grad():
        batched = model(**batch).embeddings
        for index, product in enumerate(products):
            alone = model(**processor(products=[product])).embeddings
            torch.testing.assert_close(alone[0], batched[index], atol=1e-5, rtol=0)


def test_direct_mode_is_one_backbone_forward(tiny_model, product_images):
    model, processor = tiny_model
    calls = []
    handle = model.backbone.model.language_model.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        embed(model, processor, mixed_queries(product_images))
    finally:
        handle.remove()
    assert len(calls) == 1


def test_reason_mode_matches_a_full_forward_over_the_generated_sequence(tiny_model, product_images):
    model, processor = tiny_model
    activate_new_modules(model)
    config = model.config
    for query in ["men navy shirts", {"text": "red", "image": product_images["red"]}]:
        batch = processor(queries=[query], mode="reason")
        result = model.embed_with_reasoning(**batch, max_reasoning_tokens=5)
        reasoning = result["reasoning_ids"]
        closing = torch.tensor([[config.think_end_token_id, config.emb_token_id]])
        sequence = torch.cat([batch["input_ids"], reasoning, closing], dim=1)
        with torch.no_grad():
            full = model(
                input_ids=sequence,
                attention_mask=torch.ones_like(sequence),
                pixel_values=batch.get("pixel_values"),
                image_grid_thw=batch.get("image_grid_thw"),
                mm_token_type_ids=F.pad(
                    batch["mm_token_type_ids"], (0, sequence.shape[1] - batch["input_ids"].shape[1])
                ),
            )
        torch.testing.assert_close(result["embeddings"], full.embeddings, atol=1e-5, rtol=0)


def test_reason_mode_prefills_the_prompt_once(tiny_model):
    model, processor = tiny_model
    lengths = []
    handle = model.backbone.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
    )
    try:
        model.embed_with_reasoning(
            **processor(queries=["navy shirt", "red dress"], mode="reason"), max_reasoning_tokens=4
        )
    finally:
        handle.remove()
    prompt_length = processor(queries=["navy shirt", "red dress"], mode="reason")["input_ids"].shape[1]
    assert lengths[0] == prompt_length
    assert all(length <= 3 for length in lengths[1:]), lengths
    assert len(lengths) == 1 + 3 + 1  # prefill, 3 more decode steps, one <emb> step


class ForceThinkEnd:
    """Logits processor that makes row 0 close its reasoning at step `at_step`."""

    def __init__(self, think_end_id: int, at_step: int, prompt_length: int):
        self.think_end_id, self.at_step, self.prompt_length = think_end_id, at_step, prompt_length

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] - self.prompt_length == self.at_step:
            scores[0] = float("-inf")
            scores[0, self.think_end_id] = 0.0
        else:
            scores[:, self.think_end_id] = float("-inf")
        return scores


def test_reason_mode_rows_that_stop_early_match_their_solo_run(tiny_model, product_images):
    from transformers import LogitsProcessorList

    model, processor = tiny_model
    activate_new_modules(model)
    queries = [{"text": "red", "image": product_images["red"]}, "a longer query about navy blue shirts"]
    batch = processor(queries=queries, mode="reason")
    think_end = model.config.think_end_token_id
    force = LogitsProcessorList([ForceThinkEnd(think_end, 1, batch["input_ids"].shape[1])])
    result = model.embed_with_reasoning(**batch, max_reasoning_tokens=5, logits_processor=force)
    reasoning = result["reasoning_ids"]
    assert reasoning[0, 1] == think_end and (reasoning[0, 2:] == model.config.pad_token_id).all()
    for index, query in enumerate(queries):
        solo = processor(queries=[query], mode="reason")
        solo_force = LogitsProcessorList(
            [ForceThinkEnd(think_end, 1 if index == 0 else 99, solo["input_ids"].shape[1])]
        )
        alone = model.embed_with_reasoning(**solo, max_reasoning_tokens=5, logits_processor=solo_force)
        torch.testing.assert_close(alone["embeddings"][0], result["embeddings"][index], atol=1e-5, rtol=0)


def test_reason_mode_with_zero_budget_closes_reasoning_immediately(tiny_model):
    model, processor = tiny_model
    result = model.embed_with_reasoning(**processor(queries=["navy shirt"], mode="reason"), max_reasoning_tokens=0)
    direct = embed(model, processor, ["navy shirt"])
    torch.testing.assert_close(result["embeddings"], direct, atol=1e-5, rtol=0)
    assert result["reasoning_ids"].shape == (1, 0)


def test_generate_matches_the_backbone_when_modules_are_off(tiny_tokenizer):
    model, processor = build_tiny(tiny_tokenizer, use_fusion=False, use_fire=False)
    batch = processor(queries=["navy shirt", "a red dress for summer"], mode="reason")
    ours = model.generate(**batch, max_new_tokens=5, do_sample=False)
    theirs = model.backbone.generate(**batch, max_new_tokens=5, do_sample=False)
    assert torch.equal(ours, theirs)


def test_one_forward_gives_logits_and_embeddings(tiny_model):
    model, processor = tiny_model
    batch = processor(queries=["navy shirt", "red dress"])
    outputs = model(**batch, logits_to_keep=3)
    assert outputs.logits.shape == (2, 3, model.config.vlm_config.text_config.vocab_size)
    assert outputs.embeddings.shape == (2, model.config.embedding_dim)
    assert outputs.has_emb_token.all()


def test_no_logits_are_computed_by_default(tiny_model):
    model, processor = tiny_model
    assert model(**processor(queries=["navy shirt"])).logits is None


def test_rows_without_emb_token_are_flagged(tiny_model):
    model, processor = tiny_model
    batch = processor(queries=["navy shirt", "red dress"], mode="reason")
    outputs = model(**batch, return_embeddings=True)
    assert not outputs.has_emb_token.any()
    assert outputs.embeddings.shape[0] == 2


def test_gradients_reach_fusion_fire_and_head(tiny_model, product_images):
    model, processor = tiny_model
    model.train()
    batch = processor(queries=[{"text": "red", "image": product_images["red"]}, "navy shirt"])
    model(**batch).embeddings.sum().backward()
    assert model.fusion.out_proj.weight.grad.abs().sum() > 0
    assert all(block.gamma.grad.abs().sum() > 0 for block in model.fire.values())
    assert model.head.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl"])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_tokenizer, product_images, family):
    model, processor = build_tiny(tiny_tokenizer, family=family)
    activate_new_modules(model)
    model.train()
    batch = processor(queries=[{"text": "red", "image": product_images["red"]}, "navy shirt"])

    def grads():
        model.zero_grad()
        model(**batch).embeddings.pow(2).sum(dim=-1).mul(torch.tensor([1.0, 2.0])).sum().backward()
        model(**batch).embeddings[:, 0].sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert all(layer.gradient_checkpointing for layer in model.decoder_layers)
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    assert any(name.startswith("fire.") for name in checkpointed)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)


def test_bfloat16_forward_is_close_to_float32(tiny_model, product_images):
    model, processor = tiny_model
    queries = mixed_queries(product_images)
    reference = embed(model, processor, queries)
    model = model.to(torch.bfloat16)
    batch = processor(queries=queries)
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    with torch.no_grad():
        low = model(**batch).embeddings
    assert low.dtype == torch.float32
    assert F.cosine_similarity(low, reference).min() > 0.98


def test_sdpa_and_eager_attention_agree(tiny_tokenizer, product_images):
    model, processor = build_tiny(tiny_tokenizer)
    queries = mixed_queries(product_images)
    model.set_attn_implementation("sdpa")
    sdpa = embed(model, processor, queries)
    model.set_attn_implementation("eager")
    eager = embed(model, processor, queries)
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=0)


def test_forward_rejects_image_token_count_mismatch(tiny_model, product_images):
    model, processor = tiny_model
    batch = processor(queries=[{"image": product_images["red"]}])
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        model(**{**batch, "image_grid_thw": batch["image_grid_thw"] * 2})


def test_forward_rejects_image_tokens_without_pixels(tiny_model, product_images):
    model, processor = tiny_model
    batch = processor(queries=[{"image": product_images["red"]}])
    with pytest.raises(ValueError, match="pixel_values is None"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_encode_truncates_and_renormalises(tiny_model):
    model, processor = tiny_model
    full = model.encode(["navy shirt", "red dress"], processor, kind="query")
    short = model.encode(["navy shirt", "red dress"], processor, kind="query", truncate_dim=8)
    assert short.shape == (2, 8)
    torch.testing.assert_close(short, F.normalize(full[:, :8], dim=-1))
    with pytest.raises(ValueError, match="truncate_dim"):
        model.encode(["x"], processor, truncate_dim=10_000)


def test_encode_of_empty_list_is_empty(tiny_model):
    model, processor = tiny_model
    assert model.encode([], processor).shape == (0, model.config.embedding_dim)


def test_encode_batches_equal_one_big_batch(tiny_model, product_images):
    model, processor = tiny_model
    queries = mixed_queries(product_images)
    torch.testing.assert_close(
        model.encode(queries, processor, kind="query", batch_size=3),
        model.encode(queries, processor, kind="query", batch_size=8),
        atol=1e-5,
        rtol=0,
    )


def test_fusion_can_read_a_later_layer(tiny_tokenizer, product_images):
    model, processor = build_tiny(tiny_tokenizer, fusion_source_layer=1)
    activate_new_modules(model)
    queries = mixed_queries(product_images)
    batched = embed(model, processor, queries)
    alone = embed(model, processor, queries[2:3])
    torch.testing.assert_close(alone[0], batched[2], atol=1e-5, rtol=0)


def test_forward_rejects_inputs_embeds_with_a_reason(tiny_model):
    model, processor = tiny_model
    batch = processor(queries=["navy shirt"])
    embeds = model.get_input_embeddings()(batch["input_ids"])
    with pytest.raises(ValueError, match="does not take inputs_embeds"):
        model(**batch, inputs_embeds=embeds)


def test_generation_that_emits_emb_early_does_not_try_to_embed(tiny_model):
    from transformers import LogitsProcessorList

    model, processor = tiny_model
    batch = processor(queries=["navy shirt", "a longer red dress query"], mode="reason")
    emb = model.config.emb_token_id

    def emit_emb_on_row_zero(input_ids, scores):
        if input_ids.shape[1] - batch["input_ids"].shape[1] == 1:
            scores[0] = float("-inf")
            scores[0, emb] = 0.0
        return scores

    generated = model.generate(
        **batch,
        max_new_tokens=4,
        eos_token_id=emb,
        do_sample=False,
        logits_processor=LogitsProcessorList([emit_emb_on_row_zero]),
    )
    assert generated[0, batch["input_ids"].shape[1] + 1] == emb
