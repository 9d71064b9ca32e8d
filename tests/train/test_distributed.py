"""Single-process checks of the distributed-safety rules: refused rollout engines and device maps, recipes that can
run, and the stage-2 extra decode step that runs whatever the rows (the 2-process runs are in test_deepspeed_zero.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.train.test_training import perturb_zero_init

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("option", "reason"),
    [
        ("use_vllm", "vLLM has no MOON3 architecture"),
        ("use_transformers_continuous_batching", "only the prompt token"),
    ],
)
def test_rollout_engines_that_skip_fire_are_refused_naming_the_reason(option, reason, tiny_tokenizer, tmp_path):
    from tests.conftest import build_tiny
    from tests.train.test_training import grpo_trainer
    from train.data import synthetic_rows

    model, processor = build_tiny(tiny_tokenizer)
    with pytest.raises(ValueError, match=reason):
        grpo_trainer(model, processor, synthetic_rows(4), tmp_path, max_steps=1, **{option: True})


def test_no_recipe_sets_an_option_that_cannot_run():
    for recipe in sorted((REPO / "train" / "recipes").glob("*.yaml")):
        settings = yaml.safe_load(recipe.read_text())
        for option in ("use_vllm", "use_transformers_continuous_batching", "use_transformers_paged"):
            assert not settings.get(option), f"{recipe.name} sets {option}"


@pytest.mark.parametrize(
    "device_map", ["auto", "balanced", {"backbone": "cpu", "fusion": "cpu", "fire": "disk", "head": "cpu"}]
)
def test_device_maps_that_may_split_fire_from_its_layer_are_refused(device_map, tiny_checkpoint, tmp_path):
    from moon3.modeling_moon3 import Moon3Model

    with pytest.raises(ValueError, match="FIRE blocks"):
        Moon3Model.from_pretrained(tiny_checkpoint, device_map=device_map, offload_folder=str(tmp_path))


def test_single_device_maps_load(tiny_checkpoint):
    from moon3.modeling_moon3 import Moon3Model

    for device_map in ("cpu", {"": "cpu"}):
        assert Moon3Model.from_pretrained(tiny_checkpoint, device_map=device_map).fire is not None


def test_extra_decode_step_runs_even_when_every_emb_was_fed_back(tiny_model):
    """Decoding past the completions (as `synced_gpus` does on a finished process) feeds every `<emb>` back; the
    extra decode step still runs, exactly once, over the cache cropped to the completions, and the embeddings equal
    one forward over prompt + completion."""
    from train.grpo_embedding import GenerationRecorder, completion_embeddings, forward_embeddings

    model, processor = tiny_model
    perturb_zero_init(model)
    config = model.config
    batch = processor(queries=["red shirt", "a navy watch for men"], mode="reason")
    prompt_width = batch["input_ids"].shape[1]
    with torch.no_grad(), GenerationRecorder(model) as recorder:
        generated = model.generate(
            **batch,
            max_new_tokens=5,
            do_sample=False,
            # </think> as the (never produced) stop token: decoding goes on after <emb>, like a finished process
            # under synced_gpus; <emb> comes first
            eos_token_id=config.think_end_token_id,
            suppress_tokens=[config.think_end_token_id],
            pad_token_id=config.pad_token_id,
            sequence_bias={(config.emb_token_id,): 50.0},
        )
        completions = [row.tolist() for row in generated[:, prompt_width:]]
        completions = [row[: row.index(config.emb_token_id) + 1] for row in completions]
        assert all(recorder.prompt_width + len(row) - 1 in recorder.states for row in completions)
        calls = []
        handle = model.register_forward_hook(lambda *args: calls.append(1))
        try:
            recorded = completion_embeddings(model, recorder, completions)
        finally:
            handle.remove()
    assert len(calls) == 1
    prompt_ids = [
        ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
    ]
    reference = forward_embeddings(model, prompt_ids, {}, completions, torch.device("cpu"))
    torch.testing.assert_close(recorded, reference, rtol=1e-4, atol=1e-5)


def test_accelerate_configs_load_and_multinode_ones_split_processes_evenly():
    from accelerate.commands.config.config_args import load_config_from_file

    for path in sorted((REPO / "train" / "accelerate").glob("*.yaml")):
        config = load_config_from_file(str(path))
        assert config.num_processes % config.num_machines == 0, path.name
        if "multinode" in path.name:
            assert config.num_machines > 1 and config.distributed_type == "DEEPSPEED", path.name
