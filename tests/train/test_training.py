"""Stage 1 and stage 2 trainers on a tiny model: gradient caching, gradient paths, learning, NaN guard, TRL hooks."""

from __future__ import annotations

import inspect

import pytest
import torch

from tests.conftest import build_tiny
from train.data import Moon3PairCollator, synthetic_rows


def retrieval_accuracy(model, processor, rows) -> float:
    """Direct-mode top-1 accuracy of each row's query against the rows' positives."""
    from train.data import clean_item, query_item

    queries = model.encode([query_item(r["query"]) for r in rows], processor, kind="query")
    docs = model.encode([clean_item(r["positive"]) for r in rows], processor, kind="document")
    return ((queries @ docs.T).argmax(dim=1) == torch.arange(len(rows))).float().mean().item()


def stage1_trainer(model, processor, rows, tmp_path, attribute_classes=None, **overrides):
    """A stage-1 trainer over `rows`; with `attribute_classes`, the collator labels photos and the trainer gets a
    photo attribute head over them."""
    from datasets import Dataset

    from train.config import Moon3ContrastiveConfig
    from train.contrastive_trainer import Moon3ContrastiveTrainer
    from train.losses import Moon3InfoNCELoss
    from train.photo_attributes import PhotoAttributeHead

    settings = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=len(rows),
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        seed=0,
    )
    settings.update(overrides)
    args = Moon3ContrastiveConfig(**settings)
    return Moon3ContrastiveTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        data_collator=Moon3PairCollator(
            processor,
            args.embedding_chunk_size,
            reasoned_queries=args.reasoned_contrastive_weight > 0,
            reasoning_noise=args.reasoning_noise,
            attribute_classes=attribute_classes,
        ),
        processing_class=processor,
        loss_fn=Moon3InfoNCELoss(temperature=0.1, matryoshka_dims=[8, 16, 32], gather_across_devices=False),
        attribute_head=(
            PhotoAttributeHead(model.config.vlm_config.text_config.hidden_size, attribute_classes)
            if attribute_classes
            else None
        ),
    )


def perturb_zero_init(model):
    """Fusion's out_proj and FIRE's gamma start at zero (a fresh model embeds as the backbone); move them off zero so
    that every module's weights get gradient."""
    with torch.no_grad():
        model.fusion.out_proj.weight.normal_(std=0.02)
        for block in model.fire.values():
            block.gamma.fill_(0.1)


@pytest.mark.slow
def test_grad_cached_gradient_equals_full_batch_gradient(tiny_tokenizer, tmp_path):
    rows = synthetic_rows(4)
    grads = {}
    for chunk_size in (0, 3):
        model, processor = build_tiny(tiny_tokenizer)
        perturb_zero_init(model)
        trainer = stage1_trainer(model, processor, rows, tmp_path, embedding_chunk_size=chunk_size, sft_weight=0.5)
        trainer.current_gradient_accumulation_steps = 1
        batch = Moon3PairCollator(processor, chunk_size)(rows)
        assert len(batch["chunks"]) == (1 if chunk_size == 0 else 4)  # 4 queries + 4 positives + 4 SFT sequences
        trainer.training_step(trainer.model, batch)
        grads[chunk_size] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    assert grads[0].keys() == grads[3].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[3][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_reasoned_split_pairs_each_reasoned_query_with_its_own_row_positive():
    from train.contrastive_trainer import reasoned_split

    # 3 direct queries, 4 documents (3 positives + 1 hard negative), 1 SFT row, 2 reasoned queries (rows 2 and 0)
    embeddings = torch.arange(10, dtype=torch.float).unsqueeze(1)  # (10, 1): row i holds i
    doc_keys = torch.tensor([10, 11, 12, 13])
    queries, documents, keys = reasoned_split(embeddings, 3, doc_keys, torch.tensor([2, 0]))
    assert queries.squeeze(1).tolist() == [8, 9]
    assert documents.squeeze(1).tolist() == [5, 3, 4, 6]  # row 2's positive, row 0's positive, then the rest
    assert keys.tolist() == [12, 10, 11, 13]


def test_reasoned_term_is_grad_cached_exactly_and_changes_the_gradient(tiny_tokenizer, tmp_path):
    rows = synthetic_rows(4)
    grads, logs = {}, {}
    for weight, chunk_size in ((0.0, 0), (0.5, 0), (0.5, 5)):
        model, processor = build_tiny(tiny_tokenizer)
        perturb_zero_init(model)
        trainer = stage1_trainer(
            model,
            processor,
            rows,
            tmp_path,
            embedding_chunk_size=chunk_size,
            reasoned_contrastive_weight=weight,
            reasoning_noise=0.3,
        )
        trainer.current_gradient_accumulation_steps = 1
        trainer.training_step(trainer.model, trainer.data_collator(rows))
        grads[weight, chunk_size] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        logs[weight, chunk_size] = dict(trainer._moon3_metrics)
    assert "contrastive/reasoned_loss" in logs[0.5, 0] and "contrastive/reasoned_loss" not in logs[0.0, 0]
    assert logs[0.5, 0]["contrastive/reasoned_loss"] == pytest.approx(logs[0.5, 5]["contrastive/reasoned_loss"])
    for name in grads[0.5, 0]:
        torch.testing.assert_close(grads[0.5, 5][name], grads[0.5, 0][name], rtol=1e-4, atol=1e-6, msg=name)
    head = "head.proj.weight"
    assert not torch.allclose(grads[0.5, 0][head], grads[0.0, 0][head])


@pytest.mark.slow
def test_stage1_overfitting_raises_retrieval_accuracy(tiny_tokenizer, tmp_path):
    rows = synthetic_rows(8)
    model, processor = build_tiny(tiny_tokenizer)
    before = retrieval_accuracy(model, processor, rows)
    trainer = stage1_trainer(
        model, processor, rows, tmp_path, max_steps=16, learning_rate=2e-3, embedding_chunk_size=8
    )
    trainer.train()
    after = retrieval_accuracy(model.eval(), processor, rows)
    assert after > before and after >= 0.75, (before, after)
    assert "contrastive/loss" in trainer.state.log_history[0] and "sft/loss" in trainer.state.log_history[0]


def test_stage1_nonfinite_loss_names_step_and_term(tiny_tokenizer, tmp_path):
    rows = synthetic_rows(4)
    model, processor = build_tiny(tiny_tokenizer)
    trainer = stage1_trainer(model, processor, rows, tmp_path, max_steps=2)
    trainer.loss_fn.forward = lambda *args, **kwargs: torch.tensor(float("nan"), requires_grad=True)
    with pytest.raises(FloatingPointError, match=r"contrastive \(InfoNCE\) loss \(nan\) at step 1"):
        trainer.train()


def test_contrastive_gradient_reaches_fusion_fire_and_projection(tiny_tokenizer, product_images):
    """The embedding from the fused log-prob forward (what GRPO's loss uses) carries gradient to every MOON3 module."""
    from train.losses import Moon3InfoNCELoss
    from train.trainer import install_fused_policy_head

    model, processor = build_tiny(tiny_tokenizer)
    perturb_zero_init(model)
    model.train()
    install_fused_policy_head(model)
    queries = [
        {"text": "red shirt", "image": product_images["red"]},
        {"text": "blue jeans", "image": product_images["wide"]},
    ]
    texts, images = processor.render(queries, kind="query", mode="reason")
    batch = processor(
        text=[t + "colour: Red.</think><emb>" for t in texts],
        images=images,
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    labels = batch["input_ids"].clone()
    labels[:, :-5] = -100
    outputs = model(**batch, labels=labels, fused_lm_head=True)
    assert outputs.log_probs.shape == (2, batch["input_ids"].shape[1] - 1)
    docs = model(
        **processor(products=[{"title": "Red shirt"}, {"title": "Blue jeans"}]), return_embeddings=True
    ).embeddings
    Moon3InfoNCELoss(gather_across_devices=False)(outputs.embeddings, docs.detach()).backward()
    for name in ("fusion.out_proj.weight", "fusion.blocks.image.attention.in_proj_weight", "head.proj.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    for block in model.fire.values():
        assert block.gamma.grad.abs().sum() > 0 and block.value_up.weight.grad.abs().sum() > 0


def grpo_trainer(model, processor, rows, tmp_path, **overrides):
    from datasets import Dataset

    from train.config import Moon3GRPOConfig
    from train.data import to_grpo_dataset
    from train.trainer import Moon3GRPOTrainer

    settings = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=6,  # 6 tokens: fast
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        seed=0,
        contrastive_weight=2.0,
        contrastive_temperature=0.1,
        target_reasoning_tokens=4,
    )
    settings.update(overrides)
    return Moon3GRPOTrainer(
        model=model,
        args=Moon3GRPOConfig(**settings),
        train_dataset=to_grpo_dataset(Dataset.from_list(rows), processor),
        processing_class=processor,
    )


@pytest.mark.slow
def test_stage2_overfitting_raises_retrieval_accuracy_and_logs_each_term(tiny_tokenizer, tmp_path):
    rows = synthetic_rows(8)
    model, processor = build_tiny(tiny_tokenizer)
    before = retrieval_accuracy(model, processor, rows)
    trainer = grpo_trainer(model, processor, rows, tmp_path, max_steps=8)
    trainer.train()  # the rank reward reads its embeddings from transformers' generation (no fallback)
    after = retrieval_accuracy(model.eval(), processor, rows)
    assert after > before, (before, after)
    logged = trainer.state.log_history[0]
    for key in (
        "grpo/loss",
        "contrastive/loss",
        "retrieval/in_batch_accuracy",
        "completions/reasoning_length",
        "rewards/retrieval_rank_reward/mean",
        "rewards/format_reward/mean",
        "rewards/length_reward/mean",
    ):
        assert key in logged, key


def one_step_grpo_trainer(model, processor, rows, tmp_path, **overrides):
    """One stage-2 step of 2 queries x 2 completions."""
    settings = dict(max_steps=1, per_device_train_batch_size=4, num_generations=2, **overrides)
    return grpo_trainer(model, processor, rows, tmp_path, **settings)


def test_stage2_attribute_reward_is_weighted_and_logged(tiny_tokenizer, tmp_path):
    rows = synthetic_rows(4)
    model, processor = build_tiny(tiny_tokenizer)
    trainer = one_step_grpo_trainer(model, processor, rows, tmp_path, attribute_reward_weight=0.7)
    assert trainer.args.reward_weights == [1.0, 0.5, 0.1, 0.7]
    trainer.train()
    assert 0.0 <= trainer.state.log_history[0]["rewards/attribute_reward/mean"] <= 1.0


def test_stage2_attribute_reward_without_reasoning_targets_is_refused(tiny_tokenizer, tmp_path):
    rows = [{key: value for key, value in row.items() if key != "reasoning"} for row in synthetic_rows(4)]
    model, processor = build_tiny(tiny_tokenizer)
    with pytest.raises(ValueError, match="needs a `reasoning` column"):
        grpo_trainer(model, processor, rows, tmp_path, max_steps=1, attribute_reward_weight=0.5)


def test_stage2_direct_term_is_stage1_infonce_on_the_steps_rows_and_trains_the_model(tiny_tokenizer, tmp_path):
    from train.data import clean_item, product_key, query_item

    rows = synthetic_rows(2)  # one step of 2 queries x 2 completions holds both rows, each twice
    before, after = {}, {}
    for weight in (0.0, 0.8):
        model, processor = build_tiny(tiny_tokenizer)
        perturb_zero_init(model)
        initial = {name: p.detach().clone() for name, p in model.named_parameters()}
        trainer = one_step_grpo_trainer(model, processor, rows, tmp_path, direct_contrastive_weight=weight)
        if weight:  # what the term must equal: InfoNCE of the initial model's direct-mode embeddings
            with torch.no_grad():
                queries = model.encode([query_item(r["query"]) for r in rows], processor, kind="query")
                docs = model.encode([clean_item(r["positive"]) for r in rows], processor, kind="document")
            twice = torch.tensor([0, 0, 1, 1])
            keys = torch.tensor([product_key(r["positive"]) for r in rows])[twice]
            expected = trainer.loss_fn(queries[twice], torch.cat([docs[twice], docs[twice]]), torch.cat([keys, keys]))
        trainer.train()
        before[weight], after[weight] = initial, dict(model.named_parameters())
    logged = trainer.state.log_history[0]
    assert logged["contrastive/direct_loss"] == pytest.approx(expected.item(), rel=1e-4)
    changed = [
        n for n in after[0.8] if not torch.equal(after[0.8][n] - before[0.8][n], after[0.0][n] - before[0.0][n])
    ]
    assert any(name.startswith("head.") for name in changed) and any("embed_tokens" in n for n in changed)


def test_stage2_direct_term_off_by_default_and_negative_weight_refused(tiny_tokenizer, tmp_path):
    from train.config import Moon3GRPOConfig

    model, processor = build_tiny(tiny_tokenizer)
    trainer = grpo_trainer(
        model, processor, synthetic_rows(2), tmp_path, max_steps=1, per_device_train_batch_size=4, num_generations=2
    )
    trainer.train()
    assert "contrastive/direct_loss" not in trainer.state.log_history[0]
    with pytest.raises(ValueError, match="direct_contrastive_weight must be >= 0"):
        Moon3GRPOConfig(output_dir=str(tmp_path), use_cpu=True, direct_contrastive_weight=-0.1)


def test_stage2_nonfinite_loss_names_step_and_term(tiny_tokenizer, tmp_path):
    model, processor = build_tiny(tiny_tokenizer)
    trainer = grpo_trainer(
        model, processor, synthetic_rows(4), tmp_path, max_steps=1, per_device_train_batch_size=4, num_generations=2
    )
    trainer.loss_fn.forward = lambda *args, **kwargs: torch.tensor(float("inf"), requires_grad=True)
    with pytest.raises(FloatingPointError, match=r"contrastive \(InfoNCE\) loss \(inf\) at step 1"):
        trainer.train()


def test_trl_private_hooks_keep_the_signatures_we_rely_on():
    """Moon3GRPOTrainer overrides/wraps these TRL internals; this fails when an upstream release changes them."""
    from trl import GRPOTrainer

    assert list(inspect.signature(GRPOTrainer._calculate_rewards).parameters) == [
        "self",
        "inputs",
        "prompts",
        "completions",
        "completion_ids_list",
    ]
    assert list(inspect.signature(GRPOTrainer._generate_and_score_completions).parameters) == ["self", "inputs"]
    assert list(inspect.signature(GRPOTrainer._generate_single_turn).parameters)[:5] == [
        "self",
        "prompt_ids",
        "images",
        "multimodal_fields",
        "num_generations",
    ]


def test_trl_calls_the_hooks_we_override_the_way_we_rely_on(tiny_tokenizer, tmp_path):
    """One real Moon3GRPOTrainer step, watched (every call goes through to TRL): TRL's generation reaches
    `_generate_single_turn` and runs transformers' `generate` (the recorder feeds the rank reward), the rewards get one
    completion per row, the per-row candidate tensors we add survive TRL's shuffle and split into `compute_loss`, and
    TRL's loss calls the policy with `fused_lm_head=True` (whose output carries the `<emb>` embeddings)."""
    from train.trainer import Moon3GRPOTrainer, Moon3PolicyOutput

    model, processor = build_tiny(tiny_tokenizer)
    trainer = grpo_trainer(
        model, processor, synthetic_rows(4), tmp_path, max_steps=1, per_device_train_batch_size=4, num_generations=2
    )
    seen = {"single_turn": 0, "reward_rows": [], "loss_rows": [], "fused_outputs": 0}

    def spy(name, record):
        original = getattr(Moon3GRPOTrainer, name)

        def wrapper(self, *args, **kwargs):
            record(*args)
            return original(self, *args, **kwargs)

        return wrapper

    def on_forward(module, args, kwargs, output):
        if kwargs.get("fused_lm_head") and isinstance(output, Moon3PolicyOutput) and output.embeddings is not None:
            seen["fused_outputs"] += 1

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            Moon3GRPOTrainer,
            "_generate_single_turn",
            spy("_generate_single_turn", lambda *a: seen.__setitem__("single_turn", seen["single_turn"] + 1)),
        )
        patch.setattr(
            Moon3GRPOTrainer,
            "_calculate_rewards",
            spy("_calculate_rewards", lambda *a: seen["reward_rows"].append(len(a[3]))),
        )
        patch.setattr(
            Moon3GRPOTrainer,
            "compute_loss",
            spy(
                "compute_loss", lambda model, inputs, *a: seen["loss_rows"].append(len(inputs["positive_embeddings"]))
            ),
        )
        handle = model.register_forward_hook(on_forward, with_kwargs=True)
        try:
            trainer.train()
        finally:
            handle.remove()
    assert seen["single_turn"] >= 1
    assert seen["reward_rows"] and all(rows == 4 for rows in seen["reward_rows"])
    assert seen["loss_rows"] == [4]  # one step, 2 prompts x 2 completions, each with its candidates
    assert seen["fused_outputs"] >= 1


@pytest.mark.parametrize("with_images", [False, True])
def test_completion_embeddings_read_during_generation_equal_one_forward(tiny_model, product_images, with_images):
    """The rank reward's completion embeddings, read from generate() (plus one decode step for the rows whose last
    token was never fed back), equal one forward over prompt + completion: rows finishing early, on the last step, or
    cut off."""
    from transformers import LogitsProcessor, LogitsProcessorList

    from train.grpo_embedding import GenerationRecorder, completion_embeddings, forward_embeddings
    from train.trainer import install_fused_policy_head

    model, processor = tiny_model
    perturb_zero_init(model)
    install_fused_policy_head(model)
    config = model.config
    word = processor.tokenizer.convert_tokens_to_ids("red") if "red" in processor.tokenizer.get_vocab() else 100
    plans = [
        [word, config.think_end_token_id, config.emb_token_id],  # <emb> fed back during generation
        [word, word, word, config.think_end_token_id, config.emb_token_id],  # <emb> on the last step
        [word] * 5,
    ]  # cut off: embedded at its last token
    queries = [
        "red shirt",
        {"text": "blue jeans", "image": product_images["wide"]} if with_images else "blue jeans",
        {"image": product_images["red"]} if with_images else "a long query about a navy watch",
    ]

    class Force(LogitsProcessor):
        def __call__(self, input_ids, scores):
            step = input_ids.shape[1] - prompt_width
            forced = torch.full_like(scores, -1e9)
            for row, plan in enumerate(plans):
                forced[row, plan[min(step, len(plan) - 1)]] = 0
            return forced

    batch = processor(queries=queries, mode="reason")
    prompt_width = batch["input_ids"].shape[1]
    with GenerationRecorder(model) as recorder:
        generated = model.generate(
            **batch,
            max_new_tokens=5,
            do_sample=False,
            eos_token_id=config.emb_token_id,
            pad_token_id=config.pad_token_id,
            logits_processor=LogitsProcessorList([Force()]),
        )
        completions = [[t for t in row.tolist()] for row in generated[:, prompt_width:]]
        completions = [
            row[: row.index(config.emb_token_id) + 1] if config.emb_token_id in row else row for row in completions
        ]
        assert completions == plans
        assert recorder.prompt_width + 2 in recorder.states  # row 0's <emb> was fed back by generate itself
        recorded = completion_embeddings(model, recorder, completions)
    prompt_ids = [
        ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
    ]
    fields = {key: batch[key] for key in ("pixel_values", "image_grid_thw") if key in batch}
    reference = forward_embeddings(model, prompt_ids, fields, completions, torch.device("cpu"))
    torch.testing.assert_close(recorded, reference, rtol=1e-4, atol=1e-5)


def test_retrieval_ranks_count_distinct_candidates_and_rank_the_positive():
    from train.trainer import Moon3GRPOTrainer

    docs = torch.eye(3)  # products 10, 20, 30
    candidates = {
        "positive_embeddings": docs[[0, 1, 0]],
        "negative_embeddings": docs[[2, 2, 1]],
        "positive_keys": torch.tensor([10, 20, 10]),
        "negative_keys": torch.tensor([30, 30, 20]),
    }
    queries = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.2, 0.9], [0.1, 0.8, 0.5]])
    ranks, total = Moon3GRPOTrainer._retrieval_ranks(None, queries, candidates)
    assert (ranks, total) == ([1, 2, 3], 3)


def test_stage1_sft_loss_on_kept_logits_equals_the_full_logits_loss(tiny_tokenizer, tmp_path):
    """The SFT loss from the last `keep` positions' logits is the model's own loss over every position."""
    rows = synthetic_rows(4)
    model, processor = build_tiny(tiny_tokenizer)
    trainer = stage1_trainer(model, processor, rows, tmp_path, sft_weight=0.5)
    chunk = Moon3PairCollator(processor, 0)(rows)["chunks"][0]
    _, sft = trainer._forward_chunk(model, chunk)
    full = model(**{k: v for k, v in chunk.items() if k != "labels"}, labels=chunk["labels"]).loss
    torch.testing.assert_close(sft, full, rtol=1e-5, atol=1e-6)
