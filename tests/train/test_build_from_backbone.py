"""`build_from_backbone`: MOON3 around a pretrained Qwen-VL folder without a second (random) copy of its weights."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY_SIZES


@pytest.fixture(scope="module")
def backbone_folder(tmp_path_factory, tiny_tokenizer):
    """A saved tiny Qwen3-VL (weights, tokenizer, image processor), as a Hub backbone folder looks."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from train.build_checkpoint import build_image_processor, small_vlm_config

    folder = tmp_path_factory.mktemp("qwen3-vl-tiny")
    torch.manual_seed(0)
    config = AutoConfig.for_model(**small_vlm_config(tiny_tokenizer, **TINY_SIZES))
    AutoModelForImageTextToText.from_config(config).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    build_image_processor("qwen3_vl").save_pretrained(folder)
    return folder


def test_build_from_backbone_keeps_the_loaded_weights_and_never_builds_a_random_backbone(backbone_folder, monkeypatch):
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from train.build_checkpoint import build_from_backbone

    devices = []
    original = AutoModelForImageTextToText.from_config

    def recording_from_config(*args, **kwargs):
        model = original(*args, **kwargs)
        devices.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(AutoModelForImageTextToText, "from_config", recording_from_config)
    model, processor = build_from_backbone(str(backbone_folder), dtype="float32", fusion_num_heads=4)
    assert devices == ["meta"]  # the only backbone built inside MOON3 had no storage
    saved = load_file(backbone_folder / "model.safetensors")
    state = model.backbone.state_dict()
    for name, tensor in saved.items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0, msg=name)
    assert all(p.device.type == "cpu" for p in model.parameters())
    # MOON3's own modules initialised as post_init does: zero output projection and FIRE gates, unit norms
    assert model.fusion.out_proj.weight.abs().max() == 0 and model.fusion.out_proj.bias.abs().max() == 0
    assert all((block.gamma == model.config.fire_gate_init).all() for block in model.fire.values())
    assert (model.fusion.blocks["image"].query_norm.weight == 1).all()
    assert 0.01 < model.head.proj.weight.std().item() < 0.04  # transformers' normal(0.02) init, not garbage memory
    embeddings = model.encode(["men navy blue shirts"], processor, kind="query")
    assert torch.isfinite(embeddings).all()


def test_build_from_backbone_hooks_fire_on_the_loaded_layers(backbone_folder, product_images):
    from train.build_checkpoint import build_from_backbone

    model, processor = build_from_backbone(str(backbone_folder), dtype="float32", fusion_num_heads=4)
    model.eval()
    item = [{"text": "red", "image": product_images["red"]}]
    before = model.encode(item, processor, kind="query")
    with torch.no_grad():
        for block in model.fire.values():
            block.gamma.fill_(5.0)
            block.value_up.weight.normal_()
    assert not torch.allclose(before, model.encode(item, processor, kind="query"))
