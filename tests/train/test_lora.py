"""LoRA (`--use_peft`) in both stages, the flags TRL's ModelConfig parses, and the precision rules."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests.conftest import build_tiny
from tests.train.test_grpo_images_and_kl import image_rows
from tests.train.test_training import perturb_zero_init, stage1_trainer
from train.data import Moon3PairCollator, synthetic_rows

QUERIES = ["men navy blue casual shirts", "women red running shoes"]


def model_args(**overrides):
    """TRL's `ModelConfig` with the given flags (its own defaults otherwise)."""
    from trl import ModelConfig

    settings = dict(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    settings.update(overrides)
    return ModelConfig(**settings)


def lora_tiny(tiny_tokenizer, **overrides):
    from train.lora import apply_lora

    model, processor = build_tiny(tiny_tokenizer)
    perturb_zero_init(model)  # fusion's out_proj and FIRE's gamma off zero, so every module's weights get gradient
    return apply_lora(model, model_args(**overrides)), processor


def trainable_names(model) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def test_lora_trains_adapters_fusion_fire_head_and_the_new_token_rows_only(tiny_tokenizer, tmp_path):
    from peft.utils.other import TrainableTokensWrapper

    model, processor = lora_tiny(tiny_tokenizer)
    names = trainable_names(model)
    assert any("lora_A" in n for n in names) and all("visual" not in n for n in names)
    for part in ("fusion.modules_to_save", "fire.0.modules_to_save", "head.proj.modules_to_save", "trainable_tokens"):
        assert any(part in n for n in names), part
    assert not any(n.endswith("embed_tokens.weight") or "lm_head" in n for n in names)  # the full matrices stay frozen
    assert all(parameter.dtype == torch.float32 for name, parameter in model.named_parameters() if name in names)
    # the LM head's new-token rows are the embedding's trained ones (tied), not frozen copies
    assert isinstance(model.get_output_embeddings(), TrainableTokensWrapper)

    rows = image_rows(tmp_path, 4)  # FIRE acts at image positions
    trainer = stage1_trainer(model, processor, rows, tmp_path, sft_weight=0.5)
    trainer.current_gradient_accumulation_steps = 1
    trainer.training_step(trainer.model, Moon3PairCollator(processor)(rows))
    grads = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    for part in ("lora_B", "fusion.modules_to_save", "fire.0.modules_to_save", "head.proj.modules_to_save"):
        assert any(part in n for n in grads), part
    delta = next(p for n, p in model.named_parameters() if "trainable_tokens_delta" in n)
    assert delta.grad is not None and delta.grad.abs().sum() > 0


def test_fire_runs_the_trained_copy_under_peft(tiny_tokenizer, product_images):
    """PEFT's modules_to_save replaces a FIRE block by a wrapper; the layer hook must run the wrapper's copy."""
    model, processor = lora_tiny(tiny_tokenizer)
    model.eval()
    base = model.get_base_model()
    items = [{"text": "red", "image": product_images["red"]}]
    before = base.encode(items, processor, kind="query")
    with torch.no_grad():
        for block in base.fire.values():
            block.modules_to_save["default"].gamma.mul_(50.0)
    after = base.encode(items, processor, kind="query")
    assert not torch.allclose(before, after)


@pytest.mark.slow  # 37 s on the shared machine: a training run, three saves and six loads
def test_lora_run_saves_an_adapter_and_a_merged_model_that_load_everywhere(tiny_tokenizer, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoProcessor

    from train.stage_setup import save_loadable

    model, processor = lora_tiny(tiny_tokenizer)
    rows = synthetic_rows(4)
    trainer = stage1_trainer(model, processor, rows, tmp_path / "run", max_steps=2)
    trainer.train()
    model.eval()
    expected = model.get_base_model().encode(QUERIES, processor, kind="query")
    out = tmp_path / "saved"
    save_loadable(trainer, processor, str(out), base_checkpoint=None)  # a random start: the base is saved too
    embeddings = {}
    for folder in (out, out / "adapter", out / "adapter" / "base"):
        loaded = AutoModel.from_pretrained(folder, trust_remote_code=True)
        loaded_processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        embeddings[folder] = loaded.encode(QUERIES, loaded_processor, kind="query")
        st = SentenceTransformer(str(folder), trust_remote_code=True)
        torch.testing.assert_close(torch.as_tensor(st.encode_query(QUERIES)), embeddings[folder], atol=1e-5, rtol=0)
    torch.testing.assert_close(embeddings[out], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(embeddings[out / "adapter"], expected, atol=1e-5, rtol=0)
    assert not torch.allclose(embeddings[out / "adapter" / "base"], expected, atol=1e-3)  # training changed it


@pytest.mark.slow  # ~10 s quiet, 40 s on the shared machine
def test_stage2_trains_lora_with_kl_to_the_adapter_free_policy(tiny_tokenizer, tmp_path):
    from tests.train.test_grpo_images_and_kl import grpo_trainer

    model, processor = lora_tiny(tiny_tokenizer)
    before = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = grpo_trainer(model, processor, synthetic_rows(4), tmp_path, beta=0.5)
    assert trainer.ref_model is None  # TRL's LoRA reference: the policy with its adapter disabled
    trainer.train()
    assert [entry["kl"] for entry in trainer.state.log_history if "kl" in entry][-1] > 0
    changed = {n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])}
    assert any("lora_" in n for n in changed) and any("head.proj.modules_to_save" in n for n in changed)


# --------------------------------------------------------------------------- flags refused or honoured


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"load_in_4bit": True}, "--load_in_4bit / --load_in_8bit"),
        ({"load_in_8bit": True}, "--load_in_4bit / --load_in_8bit"),
        ({"lora_task_type": "SEQ_CLS"}, "--lora_task_type 'SEQ_CLS' is not supported"),
        ({"lora_r": 0}, "--lora_r must be >= 1"),
    ],
)
def test_unsupported_model_flags_are_refused_by_name(flags, message):
    from train.lora import check_lora_arguments

    with pytest.raises(ValueError, match=message):
        check_lora_arguments(model_args(**flags))


def test_lora_target_modules_must_name_language_model_layers(tiny_model):
    from train.lora import target_module_pattern

    model, _ = tiny_model
    with pytest.raises(ValueError, match=r"--lora_target_modules \['qkv_typo'\]"):
        target_module_pattern(model, ["qkv_typo"])
    pattern = target_module_pattern(model, ["all-linear"])
    import re

    matched = [name for name, _ in model.named_modules() if re.match(pattern, name)]
    assert matched and all(name.startswith("backbone.model.language_model.") for name in matched)


@pytest.mark.parametrize(
    ("dtype", "use_peft", "bf16", "message"),
    [
        ("bfloat16", False, True, "dtype bfloat16 with full fine-tuning"),
        ("bfloat16", True, False, "needs autocast"),
    ],
)
def test_precision_that_would_train_badly_is_refused(dtype, use_peft, bf16, message):
    from train.stage_setup import check_precision

    with pytest.raises(ValueError, match=message):
        check_precision(model_args(dtype=dtype, use_peft=use_peft), SimpleNamespace(bf16=bf16, fp16=False))
    check_precision(model_args(dtype="float32", use_peft=False), SimpleNamespace(bf16=True, fp16=False))


def test_attn_implementation_reaches_the_backbone(tiny_checkpoint):
    from train.build_checkpoint import load_for_training

    model, _ = load_for_training(str(tiny_checkpoint), attn_implementation="eager")
    assert model.backbone.model.language_model.config._attn_implementation == "eager"
    assert model.backbone.model.visual.config._attn_implementation == "eager"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dataset_config", "default"], "--dataset_config not supported"),
        (["--dataset_streaming", "true"], "--dataset_streaming not supported"),
        (["--cast_lm_head_to_fp32", "true"], "cast_lm_head_to_fp32 is not supported"),
        (["--use_liger_kernel", "true"], "use_liger_kernel is not supported"),
    ],
)
def test_stage2_parser_refuses_flags_it_would_ignore(flags, message, tmp_path):
    from train.grpo_contrastive import make_parser

    argv = ["--synthetic_rows", "4", "--output_dir", str(tmp_path), "--use_cpu", "true", "--bf16", "false", *flags]
    with pytest.raises(ValueError, match=message):
        make_parser().parse_args_and_config(args=argv)
