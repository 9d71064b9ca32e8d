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
    assert rows[0]["reasoning"] == "audience: Women; type: Tops; colour: Blue; usage: Casual."
    old_layout = fashion_rows(products, kinds=["attribute"], reasoning_layout="catalogue")
    assert old_layout[0]["reasoning"] == "audience: Women; colour: Blue; usage: Casual; type: Tops."


FULL_ATTRIBUTES = {
    "gender": "Men",
    "masterCategory": "Apparel",
    "subCategory": "Topwear",
    "articleType": "Shirts",
    "baseColour": "Navy Blue",
    "season": "Fall",
    "usage": "Casual",
}


def test_scored_layout_is_one_field_order_for_every_query_kind():
    """Title, image and attribute queries state their fields in the same order, without the unscored categories, so
    the field after `audience: X;` never depends on the query kind (the malformed-reasoning diagnosis)."""
    product = {"id": "1", "title": "Turtle Men Navy Blue Shirt", "attributes": FULL_ATTRIBUTES, "images": ["/x.jpg"]}
    rows = fashion_rows([product], kinds=["title", "image", "image+title", "attribute"])
    full = "audience: Men; type: Shirts; colour: Navy Blue; usage: Casual; season: Fall."
    assert [row["reasoning"] for row in rows] == [
        full,
        full,
        full,
        "audience: Men; type: Shirts; colour: Navy Blue; usage: Casual.",
    ]
    assert rows[2]["query"] == {"text": "Turtle Men Navy Blue Shirt", "image": "/x.jpg"}
    catalogue = fashion_rows([product], kinds=["title"], reasoning_layout="catalogue")[0]["reasoning"]
    assert catalogue.startswith("audience: Men; category: Apparel; sub-category: Topwear; type: Shirts;")
    with pytest.raises(ValueError, match="reasoning_layout"):
        fashion_rows([product], reasoning_layout="alphabetical")


def test_positive_reasoning_adds_a_labelled_document_side_sft_sequence(tiny_model, tmp_path):
    _, processor = tiny_model
    product = {"id": "1", "title": "Turtle Men Navy Blue Shirt", "attributes": FULL_ATTRIBUTES}
    rows = fashion_rows([product], kinds=["title"], product_reasoning=True)
    assert rows[0]["positive_reasoning"] == rows[0]["reasoning"]
    write_jsonl(rows, tmp_path / "rows.jsonl")
    loaded = load_pairs(tmp_path / "rows.jsonl")
    assert loaded[0]["positive_reasoning"] == rows[0]["reasoning"]
    chunk = Moon3PairCollator(processor, chunk_size=0)(rows)["chunks"][0]
    assert chunk["input_ids"].shape[0] == 1 + 1 + 1 + 1  # query, positive, query SFT, positive SFT
    document_sft = processor.tokenizer.decode(chunk["input_ids"][3][chunk["attention_mask"][3].bool()])
    assert "Turtle Men Navy Blue Shirt" in document_sft and "Attributes" in document_sft  # the document prompt
    labelled = processor.tokenizer.decode(chunk["labels"][3][chunk["labels"][3] != -100])
    assert labelled.replace(" ", "") == (rows[0]["reasoning"] + "</think><emb>").replace(" ", "")
    with pytest.raises(ValueError, match="'positive_reasoning' must be a string"):
        write_jsonl([{**rows[0], "positive_reasoning": 3}], tmp_path / "bad.jsonl")
        load_pairs(tmp_path / "bad.jsonl")


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
    from moon3 import configuration_moon3
    from train.build_tokenizer import catalogue_texts

    texts = catalogue_texts(FASHION_DIR)
    assert any(text.startswith("Title: ") and "\nAttributes: gender: " in text for text in texts[:3])
    assert any(text.startswith("audience: ") for text in texts[:3])
    assert configuration_moon3.DEFAULT_QUERY_INSTRUCTION in texts[:5]


# --------------------------------------------------------------------------- any attribute keys, errors that name file/row


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


FASHION_ROW = {
    "query": {"text": "women blue casual tops"},
    "positive": {
        "id": "1",
        "title": "Tops",
        "attributes": {"gender": "Women", "baseColour": "Blue", "usage": "Casual"},
    },
    "reasoning": "audience: Women; colour: Blue.",
}
ABT_ROW = {"query": "sony bravia 40in", "positive": {"id": 7, "title": "Sony TV", "attributes": {"price": "499.0"}}}


def mixed_rows():
    """Rows whose products have different attribute keys, value types and key orders (fashion-like and Abt-Buy-like)."""
    return [
        FASHION_ROW,
        ABT_ROW,
        {
            "query": {"text": "red dress"},
            "positive": {"title": "Dress", "attributes": {"size": 38, "sale": True, "colours": ["red", "pink"]}},
            "negatives": [{"title": "Skirt", "attributes": {"material": "cotton"}}],
        },
        {
            "query": {"text": "usb cable"},
            "positive": {"title": "Cable", "attributes": {"price": "9.9", "length": 1.5}},
        },
    ]


def test_rows_with_any_attribute_keys_load_across_and_within_files(tmp_path):
    from train.data import clean_item

    first = write_rows(tmp_path / "fashion.jsonl", [FASHION_ROW, mixed_rows()[2]])  # two key sets in one file
    second = write_rows(tmp_path / "abt.jsonl", [ABT_ROW, mixed_rows()[3]])
    dataset = load_pairs([first, second])
    positives = [clean_item(row["positive"]) for row in dataset]
    assert positives[0]["attributes"] == FASHION_ROW["positive"]["attributes"]  # its own keys, in its own order
    assert list(positives[1]["attributes"]) == ["size", "sale", "colours"]
    assert positives[1]["attributes"]["sale"] is True and positives[1]["attributes"]["size"] == 38
    assert positives[2] == {"id": "7", "title": "Sony TV", "attributes": {"price": "499.0"}}
    assert clean_item(dataset[1]["negatives"][0]) == {"title": "Skirt", "attributes": {"material": "cotton"}}
    dataset.to_parquet(str(tmp_path / "mixed.parquet"))  # the stored form reads back the same
    again = load_pairs(tmp_path / "mixed.parquet")
    assert [clean_item(row["positive"]) for row in again] == positives


def test_mixed_attribute_rows_train_both_stages(tiny_tokenizer, tmp_path):
    from tests.conftest import build_tiny
    from tests.train.test_training import grpo_trainer, stage1_trainer

    dataset = load_pairs(write_rows(tmp_path / "mixed.jsonl", mixed_rows()))
    rows = list(dataset)
    model, processor = build_tiny(tiny_tokenizer)
    stage1_trainer(model, processor, rows, tmp_path / "s1", max_steps=1).train()
    model, processor = build_tiny(tiny_tokenizer)
    trainer = grpo_trainer(
        model, processor, rows, tmp_path / "s2", max_steps=1, per_device_train_batch_size=4, num_generations=2
    )
    trainer.train()
    assert trainer.state.global_step == 1


@pytest.mark.parametrize(
    "positive, field",
    [
        ({"title": 5}, r"'positive'.title must be a string, got int"),
        ({"title": "x", "attributes": {"size": {"eu": 38}}}, r"'positive'.attributes\['size'\] must be a string"),
        ({"title": "x", "attributes": {"weight": float("nan")}}, r"attributes\['weight'\] is nan"),
        ({"title": "x", "attributes": "red"}, r"'positive'.attributes must be an object"),
        ({"title": "x", "images": [3]}, r"'positive'.images must be an image path"),
        ({"title": "x", "colour": "red"}, r"'positive' has unknown keys \['colour'\]"),
    ],
)
def test_wrong_field_types_name_file_row_line_and_field(tmp_path, positive, field):
    first = write_rows(tmp_path / "a.jsonl", [FASHION_ROW] * 3)
    second = tmp_path / "b.jsonl"
    second.write_text(json.dumps(ABT_ROW) + "\n\n" + json.dumps({"query": "x", "positive": positive}) + "\n")
    with pytest.raises(ValueError, match=field) as error:
        load_pairs([first, second])
    assert str(error.value).startswith(f"{second} row 1 (line 3)")  # the second file's own row, not a global index


@pytest.mark.parametrize(
    "text, hint",
    [
        ('{"query": {"text": "x"},\n "positive": {"title": "y"}}\n', "continues on another line"),
        ('[{"query": "x", "positive": {"title": "y"}}]\n', "looks like a JSON array"),
        ('{"query": "x", "positive": {"title": "y"},}\n', "no trailing commas"),
        ('"just a string"\n', "must be a JSON object"),
    ],
)
def test_bad_json_gets_a_hint_that_fits(tmp_path, text, hint):
    write_rows(tmp_path / "ok.jsonl", [FASHION_ROW])
    (tmp_path / "bad.jsonl").write_text(text)
    with pytest.raises(ValueError, match=hint) as error:
        load_pairs([tmp_path / "ok.jsonl", tmp_path / "bad.jsonl"])
    assert f"{tmp_path / 'bad.jsonl'} row 0 (line 1)" in str(error.value)


def test_a_json_array_file_with_json_suffix_loads(tmp_path):
    (tmp_path / "rows.json").write_text(json.dumps([FASHION_ROW, ABT_ROW], indent=2))
    assert len(load_pairs(tmp_path / "rows.json")) == 2


def test_processor_check_names_the_row_of_a_missing_or_corrupt_image(tiny_model, tmp_path):
    from PIL import Image

    _, processor = tiny_model
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "red.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    rows = [
        {"query": {"image": str(tmp_path / "red.jpg")}, "positive": {"title": "Red shirt"}},
        {"query": "red", "positive": {"title": "Shirt", "images": [str(tmp_path / "gone.jpg")]}},
        {"query": {"image": str(tmp_path / "broken.jpg")}, "positive": {"title": "Shirt"}},
    ]
    path = write_rows(tmp_path / "rows.jsonl", rows)
    assert len(load_pairs(path)) == 3  # the schema is fine: only building the rows finds the images
    with pytest.raises(
        ValueError, match=r"rows.jsonl row 1 \(line 2\): 'positive'.images\[0\]: .*gone.jpg' does not exist"
    ):
        load_pairs(path, processor=processor, progress=False)
    rejects = tmp_path / "rejects.jsonl"
    dataset = load_pairs(path, processor=processor, skip_bad_rows=True, rejects_path=rejects, progress=False)
    assert len(dataset) == 1
    listed = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["file"], r["row"], r["line"]) for r in listed] == [(str(path), 1, 2), (str(path), 2, 3)]
    assert "cannot read image" in listed[1]["error"] and listed[1]["raw"]["query"]["images"] == [
        str(tmp_path / "broken.jpg")
    ]


def test_skip_bad_rows_counts_schema_rejects_and_refuses_an_empty_result(tmp_path, capsys):
    path = tmp_path / "rows.jsonl"
    path.write_text(
        json.dumps(FASHION_ROW) + "\n{broken\n" + json.dumps({"query": "x", "positive": {"title": 1}}) + "\n"
    )
    dataset = load_pairs(path, skip_bad_rows=True, rejects_path=tmp_path / "rejects.jsonl")
    assert len(dataset) == 1 and "skipped 2 bad rows, kept 1" in capsys.readouterr().out
    assert [json.loads(line)["raw"] for line in (tmp_path / "rejects.jsonl").read_text().splitlines()][0] == "{broken"
    path.write_text("{broken\n")
    with pytest.raises(ValueError, match="no valid training rows left after skipping 1"):
        load_pairs(path, skip_bad_rows=True)


def test_validate_command_checks_images_with_the_shipped_processor(tmp_path, capsys):
    from train.data import main

    path = write_rows(
        tmp_path / "rows.jsonl",
        [FASHION_ROW, {"query": {"image": str(tmp_path / "gone.jpg")}, "positive": {"title": "x"}}],
    )
    main(["validate", str(path), "--schema-only"])
    assert "2 valid rows" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", str(path)])
    assert exit_info.value.code == 2
    assert f"{path} row 1 (line 2): 'query'.images[0]: image file" in capsys.readouterr().err
    main(["validate", str(path), "--skip-bad-rows", "--rejects", str(tmp_path / "rej.jsonl")])
    out = capsys.readouterr()
    assert "skipped 1 bad rows, kept 1" in out.out and "1 valid rows" in out.out
    assert "Checking rows" in out.err  # the progress bar


@pytest.mark.parametrize(
    "argv, message",
    [
        (["synthetic", "--num-rows", "0"], "--num-rows: must be >= 1, got 0"),
        (["build-fashion", "--data", ".", "--limit", "-3"], "--limit: must be >= 0, got -3"),
        (["build-fashion", "--data", ".", "--hard-negatives", "-2"], "--hard-negatives: must be >= 0, got -2"),
        (["build-fashion", "--data", ".", "--max-per-attribute-query", "0"], "must be >= 1, got 0"),
    ],
)
def test_builders_refuse_bad_counts_and_leave_nothing_behind(tmp_path, capsys, argv, message):
    from train.data import main

    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path / "rows.jsonl")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_builder_output_that_is_a_folder_is_refused_without_a_tmp_file(tmp_path, capsys):
    from train.data import main

    (tmp_path / "out").mkdir()
    with pytest.raises(SystemExit):
        main(["synthetic", "--num-rows", "4", "--out", str(tmp_path / "out")])
    assert "is a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and not any((tmp_path / "out").iterdir())


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    def rows():
        yield {"a": 1}
        raise RuntimeError("generator failed")

    with pytest.raises(RuntimeError):
        write_jsonl(rows(), tmp_path / "rows.jsonl")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("build_checkpoint", ["--random", "--hidden-size", "0"], "--hidden-size: must be >= 1, got 0"),
        ("build_checkpoint", ["--random", "--vocab-size", "-5"], "--vocab-size: must be >= 1, got -5"),
        ("build_tokenizer", ["--data", ".", "--vocab-size", "0"], "--vocab-size: must be >= 1, got 0"),
    ],
)
def test_checkpoint_and_tokenizer_builders_refuse_bad_sizes(tmp_path, capsys, module, argv, message):
    import importlib

    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(f"train.{module}").main([*argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_corrupt_reasoning_swaps_field_values_between_rows_and_keeps_free_text():
    import random

    from train.data import corrupt_reasoning

    gold = [
        "audience: Men; colour: Red; usage: Casual.",
        "audience: Women; colour: Blue; usage: Casual.",
        "a red shirt",
    ]
    assert corrupt_reasoning(gold, 0.0, random.Random(0)) == gold
    swapped = corrupt_reasoning(gold, 1.0, random.Random(0))
    assert swapped[0] == "audience: Women; colour: Blue; usage: Casual."  # the only other value of each field
    assert swapped[1] == "audience: Men; colour: Red; usage: Casual."
    assert swapped[2] == "a red shirt"  # not `name: value` parts: nothing to swap
    assert corrupt_reasoning(["colour: Red."], 1.0, random.Random(0)) == ["colour: Red."]  # no other row to draw from


def test_reasoned_queries_are_appended_unlabelled_with_noisy_reasoning_drawn_from_seed_and_batch(tiny_model):
    _, processor = tiny_model
    rows = synthetic_rows(6)
    rows[2] = {key: value for key, value in rows[2].items() if key != "reasoning"}  # a row without a target

    def reasoned_texts(batch):
        chunk = batch["chunks"][0]
        last = range(chunk["input_ids"].shape[0] - len(batch["reasoned_rows"]), chunk["input_ids"].shape[0])
        assert all((chunk["labels"][i] == -100).all() for i in last)  # the contrastive term's rows carry no SFT
        return [processor.tokenizer.decode(chunk["input_ids"][i][chunk["attention_mask"][i].bool()]) for i in last]

    plain = Moon3PairCollator(processor, chunk_size=0)(rows)
    assert plain["reasoned_rows"].tolist() == []
    gold = Moon3PairCollator(processor, chunk_size=0, reasoned_queries=True)(rows)
    assert gold["reasoned_rows"].tolist() == [0, 1, 3, 4, 5]
    assert gold["chunks"][0]["input_ids"].shape[0] == plain["chunks"][0]["input_ids"].shape[0] + 5
    texts = reasoned_texts(gold)
    for row_index, text in zip(gold["reasoned_rows"].tolist(), texts):
        compact = text.replace(" ", "")
        assert rows[row_index]["query"]["text"].replace(" ", "") in compact
        assert compact.endswith((rows[row_index]["reasoning"] + "</think><emb>").replace(" ", ""))

    def noisy(seed):
        return reasoned_texts(
            Moon3PairCollator(processor, 0, reasoned_queries=True, reasoning_noise=0.5, seed=seed)(rows)
        )

    assert noisy(0) == noisy(0)  # the same batch and seed: the same swaps
    assert noisy(0) != texts and noisy(0) != noisy(1)
    with pytest.raises(ValueError, match="reasoning_noise"):
        Moon3PairCollator(processor, 0, reasoned_queries=True, reasoning_noise=1.5)


def test_full_layout_names_the_categories_in_one_order_for_every_query_kind():
    product = {"id": "1", "title": "Turtle Men Navy Blue Shirt", "attributes": FULL_ATTRIBUTES}
    rows = fashion_rows([product], kinds=["title", "image", "attribute"], reasoning_layout="full")
    order = ["audience", "category", "sub-category", "type", "colour", "usage", "season"]
    for row in rows:
        names = [part.split(":")[0].strip() for part in row["reasoning"].rstrip(".").split(";")]
        assert names == [name for name in order if name in names], row["reasoning"]
    assert rows[0]["reasoning"].startswith("audience: Men; category: Apparel; sub-category: Topwear; type: Shirts;")


def test_usage_early_layouts_state_usage_before_the_type():
    """Same fields and values as "scored", usage and season first: greedy decoding then states them before a (possibly
    wrong) article type it would otherwise copy them from; the benchmark's parser reads both layouts alike."""
    from benchmarks.reasoning_quality import parse_reasoning

    product = {"id": "1", "title": "Turtle Men Navy Blue Shirt", "attributes": FULL_ATTRIBUTES, "images": ["/x.jpg"]}
    kinds = ["title", "image", "image+title", "attribute"]
    rows = fashion_rows([product], kinds=kinds, reasoning_layout="base-rate-first")
    scored = fashion_rows([product], kinds=kinds)
    assert rows[0]["reasoning"] == "usage: Casual; season: Fall; audience: Men; colour: Navy Blue; type: Shirts."
    assert rows[3]["reasoning"] == "usage: Casual; audience: Men; colour: Navy Blue; type: Shirts."
    for row, other in zip(rows, scored):
        assert row["reasoning"] != other["reasoning"]
        assert parse_reasoning(row["reasoning"]) == parse_reasoning(other["reasoning"])
    usage_first = fashion_rows([product], kinds=["title"], reasoning_layout="usage-first")[0]["reasoning"]
    assert usage_first == "usage: Casual; audience: Men; type: Shirts; colour: Navy Blue; season: Fall."


def _write_products_csv(rows: list[dict], folder) -> None:
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "products.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_benchmark_product_records_render_as_the_benchmark_gives_them(tmp_path):
    """`--product-record benchmark` trains on exactly the text `benchmarks.run` embeds; "catalogue" does not."""
    from benchmarks.convert_fashion import convert
    from benchmarks.data_format import load_bench_data, product_view
    from tests.benchmarks.conftest import fashion_rows as catalogue_rows
    from train.data import default_processor, read_fashion_products

    rows = catalogue_rows(tmp_path / "images", n=9)
    _write_products_csv(rows, tmp_path / "catalogue")
    bench = load_bench_data(convert(rows, tmp_path / "bench"))
    processor = default_processor()
    served = {p["id"]: processor.format_product_text(product_view(p, "product", bench.root)) for p in bench.products}

    trained = read_fashion_products(tmp_path / "catalogue", "test", product_record="benchmark")
    assert {p["id"]: processor.format_product_text(p) for p in trained} == served
    assert all(p["images"] and p["images"][0].endswith(".jpg") for p in trained)
    old = read_fashion_products(tmp_path / "catalogue", "test", product_record="catalogue")
    assert all(processor.format_product_text(p) != served[p["id"]] for p in old)


def test_unknown_product_record_is_refused(tmp_path):
    from train.data import read_fashion_products

    with pytest.raises(ValueError, match="product_record must be one of"):
        read_fashion_products(tmp_path, "train", product_record="sorted")
