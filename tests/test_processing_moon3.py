"""Moon3Processor: prompts, image handling, bad input."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image


@pytest.fixture
def processor(tiny_model):
    return tiny_model[1]


def decode(processor, batch, row=0):
    return processor.tokenizer.decode(batch["input_ids"][row][batch["attention_mask"][row].bool()])


def test_product_prompt_holds_instruction_title_attributes_and_direct_suffix(processor, product_images):
    batch = processor(
        products=[{"title": "Navy shirt", "attributes": {"colour": "Navy Blue"}, "images": [product_images["red"]]}]
    )
    text = decode(processor, batch)
    assert processor.product_instruction in text
    assert "Title: Navy shirt\nAttributes: colour: Navy Blue" in text
    assert text.endswith("<|im_start|>assistant\n<think></think><emb>")
    assert "<|vision_start|><|image_pad|>" in text


def test_query_reason_mode_ends_with_think(processor):
    text = decode(processor, processor(queries=["navy shirt"], mode="reason"))
    assert processor.query_instruction in text and processor.product_instruction not in text
    assert text.endswith("<|im_start|>assistant\n<think>")


def test_batch_is_left_padded_and_marks_image_tokens(processor, product_images):
    batch = processor(queries=["a", {"text": "much longer query text here", "image": product_images["red"]}])
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][:, -1].all()
    image_tokens = batch["input_ids"] == processor.image_token_id
    assert torch.equal(batch["mm_token_type_ids"].bool(), image_tokens)
    merge = processor.image_processor.merge_size**2
    assert image_tokens.sum() == batch["image_grid_thw"].prod(-1).sum() // merge


def test_standard_text_and_images_api_expands_image_pads(processor, product_images):
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n"
    batch = processor(text=[text], images=[product_images["red"]], return_tensors="pt")
    assert (batch["input_ids"] == processor.image_token_id).sum() > 1
    assert "pixel_values" in batch and "mm_token_type_ids" in batch


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "CMYK", "LA", "I;16"])
def test_image_modes_are_converted_to_rgb(processor, mode):
    image = Image.new(mode, (40, 40))
    assert processor.load_image(image).mode == "RGB"


def test_transparent_pixels_become_white(processor):
    image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert processor.load_image(image).getpixel((5, 5)) == (255, 255, 255)


def test_images_load_from_paths_and_bytes(processor, tmp_path):
    path = tmp_path / "shirt.png"
    Image.new("RGB", (30, 30), (1, 2, 3)).save(path)
    assert processor.load_image(path).size == (30, 30)
    assert processor.load_image(str(path)).size == (30, 30)
    assert processor.load_image(path.read_bytes()).size == (30, 30)


def test_tiny_and_huge_images_are_bounded(processor):
    tiny = processor(queries=[{"image": Image.new("RGB", (1, 1))}])
    huge = processor(queries=[{"image": Image.new("RGB", (5000, 3000))}])
    strip = processor(queries=[{"image": Image.new("RGB", (2000, 3))}])
    patch = processor.image_processor.patch_size
    for batch in (tiny, huge, strip):
        pixels = int(batch["image_grid_thw"][0, 1:].prod()) * patch * patch
        assert (
            processor.image_processor.size["shortest_edge"] <= pixels <= processor.image_processor.size["longest_edge"]
        )


def test_over_long_text_is_truncated_with_a_warning(processor, caplog):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_propagation()
    processor.max_text_tokens = 8
    try:
        with caplog.at_level("WARNING"):
            long_batch = processor(products=[{"title": "navy " * 200}])
    finally:
        processor.max_text_tokens = 256
        hf_logging.disable_propagation()
    short_batch = processor(products=[{"title": "navy"}])
    assert "cut to max_text_tokens=8" in caplog.text
    assert long_batch["input_ids"].shape[1] <= short_batch["input_ids"].shape[1] + 8


@pytest.mark.parametrize(
    ("item", "error", "match"),
    [
        ({"title": None}, ValueError, r"products\[0\]\.title is None"),
        ({}, ValueError, r"products\[0\] is empty"),
        ({"title": "  "}, ValueError, r"products\[0\] is empty"),
        ({"title": 3}, TypeError, r"products\[0\]\.title must be a string"),
        ({"title": "x", "colour": "red"}, ValueError, r"unknown keys \['colour'\]"),
        ({"title": "x", "attributes": {"colour": None}}, ValueError, r"attributes\['colour'\] is None"),
        ({"title": "x", "attributes": ["red"]}, TypeError, r"attributes must be a dict"),
        ({"title": "x", "images": ["/no/such/file.jpg"]}, ValueError, r"images\[0\].*does not exist"),
        ({"title": "x", "images": [b"not an image"]}, ValueError, r"images\[0\].*cannot read image"),
        ({"title": "x", "images": [3.5]}, TypeError, r"images\[0\]: expected a path"),
        ("just a string", TypeError, r"products\[0\] must be a dict"),
    ],
)
def test_bad_products_raise_naming_the_field(processor, item, error, match):
    with pytest.raises(error, match=match):
        processor(products=[item])


def test_corrupt_image_file_names_the_path(processor, tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ValueError, match="broken.jpg"):
        processor(products=[{"title": "x", "images": [path]}])


@pytest.mark.parametrize(
    ("query", "error", "match"),
    [
        ("", ValueError, r"queries\[0\] is an empty string"),
        ({"text": None}, ValueError, r"queries\[0\]\.text is None"),
        ({"txt": "red"}, ValueError, r"unknown keys \['txt'\]"),
        ({}, ValueError, r"queries\[0\] is empty"),
        (42, TypeError, r"queries\[0\] must be a string"),
    ],
)
def test_bad_queries_raise_naming_the_field(processor, query, error, match):
    with pytest.raises(error, match=match):
        processor(queries=[query])


def test_too_many_images_is_an_error_not_a_silent_drop(processor, product_images):
    with pytest.raises(ValueError, match="max_images_per_item"):
        processor(products=[{"title": "x", "images": [product_images["red"]] * (processor.max_images_per_item + 1)}])


def test_single_item_instead_of_list_is_rejected(processor):
    with pytest.raises(TypeError, match="Wrap a single item in a list"):
        processor(products={"title": "x"})


def test_unknown_mode_is_rejected(processor):
    with pytest.raises(ValueError, match="mode must be one of"):
        processor(queries=["x"], mode="fast")


def test_reasoning_target_is_written_from_attributes(processor):
    attributes = {"articleType": "Shirts", "baseColour": "Navy Blue", "gender": "Men"}
    assert processor.format_reasoning(attributes) == "articleType: Shirts; baseColour: Navy Blue; gender: Men."
    renamed = processor.format_reasoning(attributes, {"articleType": "type", "gender": "audience"})
    assert renamed == "type: Shirts; baseColour: Navy Blue; audience: Men."


def test_fashion_reasoning_names_live_with_the_catalogue_not_the_processor():
    from moon3 import processing_moon3
    from train.fashion import fashion_reasoning

    assert not hasattr(processing_moon3, "REASONING_FIELD_NAMES")
    attributes = {"articleType": "Shirts", "baseColour": "Navy Blue", "gender": "Men"}
    assert fashion_reasoning(attributes) == "type: Shirts; colour: Navy Blue; audience: Men."


def test_bytes_query_is_an_image(processor):
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, format="PNG")
    assert "pixel_values" in processor(queries=[buffer.getvalue()])
