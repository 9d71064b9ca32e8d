"""Shared fixtures: tiny tokenizers, processors and random MOON3 models of both backbone families.

Expensive objects are built once per session; tests get a deep copy so they cannot leak changes to each other.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO_ROOT = Path(__file__).resolve().parents[1]  # on sys.path through pyproject's `pythonpath`
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
FASHION_DIR = SHARED_DATA / "fashion-product-images"
ABT_BUY_DIR = SHARED_DATA / "abt-buy"

TINY_CORPUS = [
    "Turtle Check Men Navy Blue Shirt",
    "Manchester United Men Solid Black Track Pants",
    "Nike Women Red Running Shoes",
    "Title: Attributes: gender: Men; articleType: Shirts; baseColour: Navy Blue; usage: Casual",
    "type: Shirts; colour: Navy Blue; audience: Women; season: Summer.",
    "men navy blue casual shirts women red dress watch bag",
] * 20
# hidden 64, 2 decoder layers, 4 heads, 2-layer vision tower: forward + generate in milliseconds.
TINY_SIZES = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "vision_hidden_size": 32, "vision_depth": 2}
FAMILIES = ("qwen3_vl", "qwen2_5_vl")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from train.build_tokenizer import train_tokenizer

    return train_tokenizer(TINY_CORPUS, vocab_size=400)


def build_tiny(tokenizer, family: str = "qwen3_vl", seed: int = 0, **config_overrides):
    """A tiny random MOON3 (model in eval mode, processor) of `family`."""
    from train.build_checkpoint import build_image_processor, build_random

    config_overrides.setdefault("embedding_dim", 32)
    config_overrides.setdefault("matryoshka_dims", [8, 16, 32])
    config_overrides.setdefault("fusion_num_heads", 4)
    config_overrides.setdefault("max_reasoning_tokens", 6)
    model, processor = build_random(tokenizer, family=family, seed=seed, vlm_sizes=TINY_SIZES, **config_overrides)
    processor.image_processor = build_image_processor(family, min_pixels=32 * 32, max_pixels=64 * 64)
    return model.eval(), processor


@pytest.fixture(scope="session", params=FAMILIES)
def _tiny_model_session(request, tiny_tokenizer):
    return build_tiny(tiny_tokenizer, family=request.param)


@pytest.fixture
def tiny_model(_tiny_model_session):
    """(model, processor) for each backbone family; the model has fusion and FIRE on (zero-initialised)."""
    model, processor = _tiny_model_session
    return copy.deepcopy(model), processor


@pytest.fixture(scope="session")
def _tiny_checkpoint_session(tmp_path_factory, tiny_tokenizer):
    from train.build_checkpoint import save_checkpoint

    model, processor = build_tiny(tiny_tokenizer, family="qwen3_vl")
    path = tmp_path_factory.mktemp("tiny-moon3")
    save_checkpoint(model, processor, path)
    return path


@pytest.fixture
def tiny_checkpoint(_tiny_checkpoint_session) -> Path:
    """Folder of a saved tiny Qwen3-VL MOON3 checkpoint (config, weights, processor, code files)."""
    return _tiny_checkpoint_session


@pytest.fixture(scope="session")
def product_images():
    """Small PIL images of different sizes and modes."""
    from PIL import Image

    return {
        "red": Image.new("RGB", (60, 80), (200, 10, 10)),
        "wide": Image.new("RGB", (120, 40), (10, 10, 200)),
        "rgba": Image.new("RGBA", (48, 48), (0, 255, 0, 128)),
        "gray": Image.new("L", (50, 50), 128),
    }
