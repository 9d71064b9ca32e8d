"""Training-data format: loading, validation errors, builders."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ABT_BUY_DIR, FASHION_DIR
from train.data import Moon3PairCollator, fashion_rows, load_pairs, product_key, synthetic_rows, write_jsonl


def test_load_pairs_reads_jsonl_and_parquet(tmp_path):
    rows = synthetic_rows(6)
    write_jsonl(rows, tmp_path / "rows.jsonl")
    dataset = load_pairs(tmp_path / "rows.jsonl")
    dataset.to_parquet(str(tmp_path / "rows.parquet"))
    assert len(dataset) == 6 and len(load_pairs(tmp_path / "rows.parquet")) == 6


@pytest.mark.parametrize(
    "row, message",
    [
        ({"positive": {"title": "x"}}, "'query' is missing"),
        ({"query": {"text": "red"}, "positive": {}}, "'positive'"),
        ({"query": {"text": "red"}, "positive": {"title": "x"}, "negatives": [{}]}, r"negatives\[0\]"),
        ({"query": {"text": "red"}, "positive": {"title": "x"}, "score": 1}, "unknown keys"),
    ],
)
def test_malformed_rows_raise_with_row_and_field(tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"query": {"text": "ok"}, "positive": {"title": "fine"}}) + "\n" + json.dumps(row) + "\n"
    )
    with pytest.raises(ValueError, match=message) as error:
        load_pairs(path)
    assert "row 1" in str(error.value)


def test_attribute_rows_get_reasoning_from_the_named_attributes():
    products = [
        {
            "id": str(i),
            "title": f"t{i}",
            "attributes": {"gender": "Women", "baseColour": "Blue", "usage": "Casual", "articleType": "Tops"},
        }
        for i in range(2)
    ]
    rows = fashion_rows(products, kinds=["attribute"])
    assert rows[0]["query"] == {"text": "women blue casual tops"}
    assert rows[0]["reasoning"] == "audience: Women; colour: Blue; usage: Casual; type: Tops."


def test_collator_labels_only_the_reasoning_and_masks_nothing_else(tiny_model):
    _, processor = tiny_model
    rows = synthetic_rows(2)
    assert all(row.get("reasoning") for row in rows)
    batch = Moon3PairCollator(processor, chunk_size=0)(rows)
    chunk = batch["chunks"][0]
    assert chunk["input_ids"].shape[0] == 2 + 2 + 2  # queries, positives, then one SFT sequence per reasoning target
    labelled = processor.tokenizer.decode(chunk["labels"][4][chunk["labels"][4] != -100])
    assert labelled.replace(" ", "") == (rows[0]["reasoning"] + "</think><emb>").replace(" ", "")
    assert (chunk["labels"][:4] == -100).all()  # contrastive queries and documents carry no SFT target
    assert batch["doc_keys"].tolist() == [product_key(r["positive"]) for r in rows]


def test_contrastive_queries_are_direct_mode_never_after_their_gold_reasoning(tiny_model):
    """The reasoning target is written from the positive's attributes: an embedding read after it would copy the
    answer. The queries the contrastive loss sees end `<think></think><emb>` and hold no reasoning text."""
    _, processor = tiny_model
    rows = synthetic_rows(2)
    chunk = Moon3PairCollator(processor, chunk_size=0)(rows)["chunks"][0]
    for row, ids, mask in zip(rows, chunk["input_ids"][:2], chunk["attention_mask"][:2], strict=True):
        text = processor.tokenizer.decode(ids[mask.bool()])
        assert text.endswith("<think></think><emb>")
        assert row["reasoning"].strip() not in text


@pytest.mark.data
@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="../shared/data/fashion-product-images is absent")
def test_fashion_builder_uses_the_fixed_train_split():
    from train.data import read_fashion_products

    products = read_fashion_products(FASHION_DIR, "train")
    assert len(products) == 7628
    rows = fashion_rows(products[:50])
    assert any("image" in r["query"] for r in rows) and any("text" in r["query"] for r in rows)
    assert all(r["reasoning"] for r in rows)


@pytest.mark.data
@pytest.mark.skipif(not ABT_BUY_DIR.is_dir(), reason="../shared/data/abt-buy is absent")
def test_abt_buy_builder_uses_train_pairs_only():
    import csv

    from train.data import abt_buy_rows

    rows = abt_buy_rows(ABT_BUY_DIR)
    with (ABT_BUY_DIR / "test.csv").open() as handle:
        test_pairs = {
            (r["tableA_name"].strip(), f"buy-{r['tableB_id']}") for r in csv.DictReader(handle) if r["label"] == "1"
        }
    assert rows and not {(r["query"]["text"], r["positive"]["id"]) for r in rows} & test_pairs


def test_grpo_prompt_of_an_image_only_query_holds_just_the_image(tiny_model, tmp_path):
    from datasets import Dataset
    from PIL import Image

    from train.data import to_grpo_dataset

    _, processor = tiny_model
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "red.jpg")
    rows = [{"query": {"image": str(tmp_path / "red.jpg")}, "positive": {"title": "Red shirt"}, "reasoning": None}]
    prompt = to_grpo_dataset(Dataset.from_list(rows), processor)[0]["prompt"]
    assert [part["type"] for part in prompt[-1]["content"]] == ["image"]
    assert prompt[0]["content"][0]["text"] == processor.query_instruction


@pytest.mark.skipif(not (FASHION_DIR / "products.csv").is_file(), reason="real data not found")
def test_catalogue_tokenizer_texts_hold_the_product_text_reasoning_and_instructions():
    from train.build_tokenizer import catalogue_texts
    from train.moon3_code import configuration_moon3

    texts = catalogue_texts(FASHION_DIR)
    assert any(text.startswith("Title: ") and "\nAttributes: gender: " in text for text in texts[:3])
    assert any(text.startswith("audience: ") for text in texts[:3])
    assert configuration_moon3.DEFAULT_QUERY_INSTRUCTION in texts[:5]
