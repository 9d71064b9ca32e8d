"""Moon3Config: defaults, round trip, and errors that name the field."""

from __future__ import annotations

import pytest

from moon3.configuration_moon3 import Moon3Config


def test_default_backbone_is_qwen3_vl_and_fire_layers_are_spread():
    config = Moon3Config()
    assert config.vlm_config.model_type == "qwen3_vl"
    layers = config.vlm_config.text_config.num_hidden_layers
    assert config.fire_layers == list(range(0, layers, 2))
    assert config.get_text_config() is config.vlm_config.text_config


def test_qwen2_5_vl_backbone_is_accepted():
    assert Moon3Config(vlm_config={"model_type": "qwen2_5_vl"}).vlm_config.model_type == "qwen2_5_vl"


def test_save_and_load_round_trip(tmp_path):
    config = Moon3Config(embedding_dim=256, matryoshka_dims=[64, 256], fire_layers=[1, 3], emb_token_id=7)
    config.save_pretrained(tmp_path)
    loaded = Moon3Config.from_pretrained(tmp_path)
    assert loaded.embedding_dim == 256 and loaded.matryoshka_dims == [64, 256]
    assert loaded.fire_layers == [1, 3] and loaded.emb_token_id == 7
    assert loaded.vlm_config.to_dict() == config.vlm_config.to_dict()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"embedding_dim": 64, "matryoshka_dims": [32, 128]}, "matryoshka_dims"),
        ({"embedding_dim": 64, "matryoshka_dims": [16, 32]}, "matryoshka_dims"),
        ({"fusion_modalities": ["audio"]}, "fusion_modalities"),
        ({"fusion_num_heads": 7}, "fusion_num_heads"),
        ({"fusion_source_layer": 999}, "fusion_source_layer"),
        ({"fire_layers": [0, 999]}, "fire_layers"),
        ({"fire_rank": 0}, "fire_rank"),
        ({"max_reasoning_tokens": -1}, "max_reasoning_tokens"),
        ({"vlm_config": {"model_type": "llava"}}, "vlm_config"),
    ],
)
def test_invalid_values_fail_naming_the_field(kwargs, field):
    with pytest.raises((ValueError, TypeError), match=field):
        Moon3Config(**kwargs)


def test_instructions_are_the_processors_alone():
    """An older config.json's instruction copies are dropped (with a warning), never saved again."""
    config = Moon3Config(product_instruction="old copy", query_instruction="old copy")
    assert not hasattr(config, "product_instruction") and "query_instruction" not in config.to_dict()
