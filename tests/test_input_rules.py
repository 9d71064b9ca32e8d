"""Odd and hostile inputs to Moon3Model.encode, Moon3Processor and SentenceTransformer.encode (issue 15).

One backbone family is enough here: the rules live in the processor and the encode entry points, not the backbone.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

ATOL = 1e-5


@pytest.fixture(scope="module")
def moon3(tiny_tokenizer):
    from tests.conftest import build_tiny

    return build_tiny(tiny_tokenizer, family="qwen3_vl")


@pytest.fixture(scope="module")
def st(moon3):
    from sentence_transformers import SentenceTransformer

    from train.write_st_files import load_st_module

    model, processor = moon3
    module = load_st_module().Moon3SentenceTransformer(model, processor)
    return SentenceTransformer(
        modules=[module],
        prompts={"query": processor.query_instruction, "document": processor.product_instruction},
        device="cpu",
    )


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    array = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return path


# ---------------------------------------------------------------- one rule for strings, dicts and image paths


def test_single_string_is_one_item_in_both_apis(moon3, st):
    model, processor = moon3
    single = model.encode("navy shirt", processor, kind="query")
    assert single.shape == (model.config.embedding_dim,)
    torch.testing.assert_close(single, model.encode(["navy shirt"], processor, kind="query")[0], atol=ATOL, rtol=0)
    np.testing.assert_allclose(st.encode_query("navy shirt"), single.numpy(), atol=ATOL)


def test_single_dict_is_one_item_not_a_list_of_its_keys(moon3):
    model, processor = moon3
    from_dict = model.encode({"text": "navy shirt"}, processor, kind="query")
    torch.testing.assert_close(from_dict, model.encode("navy shirt", processor, kind="query"), atol=ATOL, rtol=0)
    product = {"title": "Navy shirt", "attributes": {"colour": "Navy"}}
    assert model.encode(product, processor).shape == (model.config.embedding_dim,)


def test_image_path_string_is_an_image_in_both_apis(moon3, st, photo):
    model, processor = moon3
    as_string = model.encode([str(photo)], processor, kind="query")
    as_image = model.encode([Image.open(photo)], processor, kind="query")
    torch.testing.assert_close(as_string, as_image, atol=ATOL, rtol=0)
    np.testing.assert_allclose(st.encode_query([str(photo)]), as_string.numpy(), atol=ATOL)


def test_text_dict_as_document_is_a_product_titled_by_the_text_in_both_apis(moon3, st):
    model, processor = moon3
    expected = model.encode([{"title": "red dress"}], processor, kind="document")
    torch.testing.assert_close(model.encode([{"text": "red dress"}], processor), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(model.encode(["red dress"], processor), expected, atol=ATOL, rtol=0)
    np.testing.assert_allclose(st.encode_document(["red dress"]), expected.numpy(), atol=ATOL)


def test_product_record_as_query_is_refused(moon3):
    model, processor = moon3
    with pytest.raises(ValueError, match=r"queries\[1\] is a product record"):
        model.encode(["shirt", {"title": "Shirt"}], processor, kind="query")


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"kind": "documents"}, ValueError, "kind must be 'document' or 'query', got 'documents'"),
        ({"mode": "Direct"}, ValueError, "mode must be 'direct' or 'reason', got 'Direct'"),
        ({"batch_size": 2.5}, TypeError, "batch_size must be a positive int, got 2.5"),
        ({"batch_size": 0}, TypeError, "batch_size must be a positive int, got 0"),
        ({"truncate_dim": "64"}, TypeError, "truncate_dim must be an int or None, got '64'"),
        ({"truncate_dim": 0}, ValueError, r"truncate_dim must be in \[1, 32\], got 0"),
    ],
)
def test_bad_encode_arguments_are_refused(moon3, kwargs, error, match):
    model, processor = moon3
    with pytest.raises(error, match=match):
        model.encode(["navy shirt"], processor, **kwargs)


def test_items_none_is_refused(moon3):
    model, processor = moon3
    with pytest.raises(TypeError, match="items is None"):
        model.encode(None, processor)


def test_errors_name_the_global_item_index_and_id(moon3):
    model, processor = moon3
    products = [{"title": f"p{i}"} for i in range(3)] + [{"id": "sku-9", "title": "x", "attributes": {"c": None}}]
    with pytest.raises(ValueError, match=r"products\[3\] \(id 'sku-9'\)\.attributes\['c'\] is None"):
        model.encode(products, processor, batch_size=2)


def test_lone_surrogate_is_refused_naming_the_field(moon3):
    model, processor = moon3
    with pytest.raises(ValueError, match=r"products\[1\]\.title holds a lone surrogate"):
        model.encode([{"title": "ok"}, {"title": "bad \ud800 text"}], processor)
    with pytest.raises(ValueError, match=r"queries\[0\] holds a lone surrogate"):
        model.encode(["\udfff"], processor, kind="query")


@pytest.mark.parametrize("bad", [0, 33, "8", 2.0])
def test_sentence_transformers_truncate_dim_is_validated(st, bad):
    error = TypeError if not isinstance(bad, int) else ValueError
    with pytest.raises(error, match="truncate_dim must be"):
        st.encode_query(["navy shirt"], truncate_dim=bad)


def test_sentence_transformers_model_level_truncate_dim_is_validated(st):
    st.truncate_dim = 0
    try:
        with pytest.raises(ValueError, match=r"truncate_dim must be in \[1, 32\], got 0"):
            st.encode_query(["navy shirt"])
    finally:
        st.truncate_dim = None
    assert st.encode_query(["navy shirt"], truncate_dim=8).shape == (1, 8)


# ---------------------------------------------------------------- special tokens in user text


def _token_counts(processor, batch) -> dict[str, int]:
    ids = batch["input_ids"][batch["attention_mask"].bool()].tolist()
    return {
        token: ids.count(processor.tokenizer.convert_tokens_to_ids(token))
        for token in processor.special_token_strings()
    }


def test_every_tokenizer_special_token_is_listed(moon3):
    _, processor = moon3
    listed = set(processor.special_token_strings())
    assert set(processor.tokenizer.all_special_tokens) <= listed
    assert {"<|image_pad|>", "<emb>", "<|im_start|>", "<|endoftext|>", "<think>", "</think>"} <= listed


def test_special_tokens_in_product_text_are_plain_text(moon3):
    _, processor = moon3
    clean = processor(products=[{"title": "a b", "description": "c", "attributes": {"k": "v", "n": "w"}}])
    for token in processor.special_token_strings():
        hostile = {"title": f"a{token}b", "description": token, "attributes": {"k": token, token: "w"}}
        batch = processor(products=[hostile])
        assert _token_counts(processor, batch) == _token_counts(processor, clean), token
        assert token not in processor.format_product_text(hostile)


def test_special_tokens_in_query_text_are_plain_text(moon3):
    _, processor = moon3
    clean = processor(queries=["plain query"])
    for token in processor.special_token_strings():
        for query in (f"plain {token} query", {"text": token * 3}):
            assert _token_counts(processor, processor(queries=[query])) == _token_counts(processor, clean), token


def test_image_pad_in_a_title_embeds_instead_of_failing_the_batch(moon3):
    model, processor = moon3
    out = model.encode([{"title": "ok"}, {"title": "tricky <|image_pad|><|image_pad|> title"}], processor)
    assert out.shape == (2, model.config.embedding_dim) and torch.isfinite(out).all()


def test_special_token_in_a_title_reads_as_its_escaped_characters(moon3):
    model, processor = moon3
    escaped = model.encode([{"title": "shirt <\u200bemb> x"}], processor)
    torch.testing.assert_close(model.encode([{"title": "shirt <emb> x"}], processor), escaped, atol=ATOL, rtol=0)


def test_reasoning_targets_escape_special_tokens(moon3):
    _, processor = moon3
    assert "<emb>" not in type(processor).format_reasoning({"colour": "red<emb>"})


# ---------------------------------------------------------------- attribute values


def test_attribute_values_have_a_documented_text_form(moon3):
    _, processor = moon3
    product = {"title": "t", "attributes": {"a": True, "b": 3, "c": 2.5, "d": 42.0, "e": ["x", 1, False], "f": ""}}
    assert processor.format_product_text(product) == "Title: t\nAttributes: a: yes; b: 3; c: 2.5; d: 42; e: x, 1, no"


@pytest.mark.parametrize(
    "value, error, match",
    [
        (math.nan, ValueError, r"\['a'\] is nan; attribute numbers must be finite"),
        (math.inf, ValueError, r"\['a'\] is inf"),
        ({"x": 1}, TypeError, r"\['a'\] is a dict; attribute values must be"),
        ({"x", "y"}, TypeError, r"\['a'\] is a set \(a set has no order: pass a sorted list\)"),
        ([["x"]], TypeError, r"\['a'\]\[0\] is a nested list"),
        (["x", None], ValueError, r"\['a'\]\[1\] is None"),
        ([1, math.nan], ValueError, r"\['a'\]\[1\] is nan"),
        (b"x", TypeError, r"\['a'\] is a bytes"),
    ],
)
def test_bad_attribute_values_are_refused_naming_the_item(moon3, value, error, match):
    model, processor = moon3
    with pytest.raises(error, match=r"products\[1\]\.attributes" + match):
        model.encode([{"title": "fine"}, {"title": "t", "attributes": {"a": value}}], processor)


# ---------------------------------------------------------------- images


def test_exif_orientation_is_applied(moon3, tmp_path):
    _, processor = moon3
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :20] = 255  # left half white, right half black
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(array).save(path, exif=exif, quality=95)
    loaded = processor.load_image(path)
    assert loaded.size == (20, 40)
    assert loaded.getpixel((10, 5))[0] > 200 and loaded.getpixel((10, 35))[0] < 50  # white on top after rotation


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.full((8, 8), 32896, dtype=np.uint16), 128),  # 16-bit: 32896 / 257 = 128
        (np.full((8, 8), 65535, dtype=np.uint16), 255),
        (np.full((8, 8), 0.5, dtype=np.float32), 127),  # float in [0, 1]: x 255
        (np.full((8, 8), 200.0, dtype=np.float32), 200),  # float in [0, 255]: kept
    ],
)
def test_high_bit_depth_images_are_scaled_to_8_bits(moon3, tmp_path, array, expected):
    _, processor = moon3
    path = tmp_path / "deep.tiff"
    Image.fromarray(array).save(path)
    value = processor.load_image(path).getpixel((4, 4))
    assert all(abs(channel - expected) <= 1 for channel in value), value


def test_float_image_outside_0_255_is_stretched(moon3):
    _, processor = moon3
    array = np.zeros((4, 8), dtype=np.float32)
    array[:, 4:] = 1000.0
    array[:, :4] = -5.0
    loaded = processor.load_image(Image.fromarray(array))
    assert loaded.getpixel((0, 0)) == (0, 0, 0) and loaded.getpixel((7, 0)) == (255, 255, 255)
