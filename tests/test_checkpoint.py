"""Checkpoint folders: save -> reload, Auto classes in a fresh offline process, building from a backbone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.conftest import REPO_ROOT, build_tiny

CODE_FILES = ("configuration_moon3.py", "modeling_moon3.py", "processing_moon3.py")


def test_saved_checkpoint_has_code_auto_map_and_processor(tiny_checkpoint):
    for name in (*CODE_FILES, "config.json", "model.safetensors", "processor_config.json", "tokenizer.json"):
        assert (tiny_checkpoint / name).is_file(), name
    auto_map = json.loads((tiny_checkpoint / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"}
    processor_config = json.loads((tiny_checkpoint / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_moon3.Moon3Processor"


def test_auto_classes_reload_with_identical_embeddings(tiny_checkpoint, tmp_path, product_images):
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(tiny_checkpoint, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    queries = ["navy shirt", {"text": "red", "image": product_images["red"]}]
    before = model.encode(queries, processor, kind="query")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    for name in CODE_FILES:
        assert (tmp_path / name).is_file(), f"save_pretrained did not copy {name}"
    reloaded = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    reprocessor = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert torch.equal(before, reloaded.encode(queries, reprocessor, kind="query"))


@pytest.mark.slow
def test_fresh_offline_process_loads_the_three_auto_classes(tiny_checkpoint):
    script = textwrap.dedent(
        f"""
        from transformers import AutoConfig, AutoModel, AutoProcessor, AutoModelForImageTextToText
        path = {str(tiny_checkpoint)!r}
        config = AutoConfig.from_pretrained(path, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        model = AutoModel.from_pretrained(path, trust_remote_code=True)
        generator = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)
        vectors = model.encode([{{"title": "Navy shirt", "attributes": {{"colour": "Navy Blue"}}}}], processor)
        print(type(config).__name__, type(processor).__name__, type(model).__name__, type(generator).__name__,
              tuple(vectors.shape))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd="/", timeout=1800
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[:4] == ["Moon3Config", "Moon3Processor", "Moon3Model", "Moon3Model"]


def test_build_from_a_pretrained_backbone_folder(tiny_tokenizer, tmp_path, product_images):
    from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    from train.build_checkpoint import build_image_processor, main, small_vlm_config

    # A stand-in "pretrained" Qwen3-VL folder: a tokenizer WITHOUT MOON3's tokens, and a backbone sized to it.
    plain_tokenizer = AutoTokenizer.from_pretrained(_save_without_moon3_tokens(tiny_tokenizer, tmp_path / "tok"))
    assert "<emb>" not in plain_tokenizer.get_vocab()
    vlm_config = small_vlm_config(tiny_tokenizer, hidden_size=64, num_layers=2, vision_hidden_size=32)
    vlm_config["text_config"]["vocab_size"] = len(plain_tokenizer)
    from transformers import AutoConfig

    backbone_config = AutoConfig.for_model(**vlm_config)
    torch.manual_seed(0)
    backbone = AutoModelForImageTextToText.from_config(backbone_config)
    backbone_dir = tmp_path / "backbone"
    backbone.save_pretrained(backbone_dir)
    plain_tokenizer.save_pretrained(backbone_dir)
    build_image_processor("qwen3_vl", max_pixels=96 * 96).save_pretrained(backbone_dir)

    out = tmp_path / "moon3"
    main(["--backbone", str(backbone_dir), "--out", str(out), "--embedding-dim", "32", "--matryoshka-dims", "8", "32"])

    model = AutoModel.from_pretrained(out, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    assert model.config.emb_token_id == processor.tokenizer.convert_tokens_to_ids("<emb>")
    assert model.get_input_embeddings().weight.shape[0] >= len(processor.tokenizer)
    old_rows = backbone.get_input_embeddings().weight[: len(plain_tokenizer)]
    assert torch.equal(model.get_input_embeddings().weight[: len(plain_tokenizer)], old_rows)
    for name, tensor in backbone.model.visual.state_dict().items():
        assert torch.equal(model.backbone.model.visual.state_dict()[name], tensor), name
    assert processor.image_processor.size["longest_edge"] == 96 * 96
    vectors = model.encode([{"title": "Navy shirt", "images": [product_images["red"]]}], processor)
    assert vectors.shape == (1, 32)


def _save_without_moon3_tokens(tokenizer, path):
    """Save a copy of `tokenizer` with <think>, </think> and <emb> removed, like a stock Qwen tokenizer."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    data = json.loads(tokenizer.backend_tokenizer.to_str())
    dropped = {"<think>", "</think>", "<emb>"}
    data["added_tokens"] = [token for token in data["added_tokens"] if token["content"] not in dropped]
    kept = {token: index for token, index in data["model"]["vocab"].items() if token not in dropped}
    # Re-number densely so the vocabulary has no holes.
    order = sorted(kept, key=kept.get)
    remap = {token: new for new, token in enumerate(order)}
    data["model"]["vocab"] = remap
    for token in data["added_tokens"]:
        token["id"] = remap[token["content"]]
    plain = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)))
    plain.pad_token = "<|endoftext|>"
    plain.save_pretrained(path)
    return path


def test_random_root_checkpoint_script_has_help():
    result = subprocess.run(
        [sys.executable, "-m", "train.build_checkpoint", "--help"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert result.returncode == 0 and "--backbone" in result.stdout


def test_tiny_qwen2_5_vl_checkpoint_round_trips(tiny_tokenizer, tmp_path):
    from transformers import AutoModel, AutoProcessor

    from train.build_checkpoint import save_checkpoint

    model, processor = build_tiny(tiny_tokenizer, family="qwen2_5_vl")
    save_checkpoint(model, processor, tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    reprocessor = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert reloaded.config.vlm_config.model_type == "qwen2_5_vl"
    torch.testing.assert_close(
        model.encode(["navy shirt"], processor, kind="query"),
        reloaded.encode(["navy shirt"], reprocessor, kind="query"),
    )


@pytest.mark.parametrize("switch", ["use_fusion", "use_fire"])
def test_ablated_build_starts_from_the_full_models_weights(tiny_tokenizer, switch):
    """`--no-fusion` / `--no-fire` remove one module; every other tensor starts bitwise equal to the full build."""
    full, _ = build_tiny(tiny_tokenizer, seed=3)
    ablated, _ = build_tiny(tiny_tokenizer, seed=3, **{switch: False})
    full_state, ablated_state = full.state_dict(), ablated.state_dict()
    assert set(ablated_state) < set(full_state)
    removed = {name.split(".")[0] for name in set(full_state) - set(ablated_state)}
    assert removed == {"fusion" if switch == "use_fusion" else "fire"}
    for name, tensor in ablated_state.items():
        assert torch.equal(tensor, full_state[name]), name
