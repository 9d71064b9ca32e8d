"""Query sets and label sets whose rows are not products (text, an image or both, with an id), and label sets that
carry their own prompt templates in the data folder."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from benchmarks import build_tasks
from benchmarks.data_format import DataFormatError, load_bench_data, write_bench_data
from benchmarks.encoders import RandomEncoder


def shop_photo_folder(root, gender_spec=None, gender_rows=None):
    """Two catalogue products, shop photos as retrieval queries and as a label set named "gender"."""
    (root / "photos").mkdir(parents=True)
    for name, colour in (("p1.png", "red"), ("p2.png", "navy"), ("shop1.png", "red"), ("shop2.png", "navy")):
        Image.new("RGB", (32, 32), colour).save(root / "photos" / name)
    products = [
        {"id": "p1", "title": "Red Dress", "attributes": {"colour": "Red"}, "images": ["photos/p1.png"]},
        {"id": "p2", "title": "Navy Shirt", "attributes": {"colour": "Navy"}, "images": ["photos/p2.png"]},
    ]
    queries = [
        {"id": "s1", "image": "photos/shop1.png", "positives": ["p1"]},  # a shop photo, not a product
        {"id": "s2", "text": "navy shirt", "image": "photos/shop2.png", "positives": ["p2"]},
        {"id": "s3", "text": "red dress", "positives": ["p1"]},
    ]
    gender_rows = gender_rows or [
        {"id": "s1", "image": "photos/shop1.png", "label": "Women"},
        {"id": "s2", "text": "a shirt for him", "image": "photos/shop2.png", "label": "Men"},
        {"id": "s3", "text": "dress", "label": "Women"},
    ]
    write_bench_data(
        root,
        "shop-photos",
        products,
        {"shop2catalogue": ({"gallery_view": "product"}, queries)},
        {"gender": ({"kind": "attribute", **(gender_spec or {})}, gender_rows)},
    )
    return root


def test_query_items_classify_and_retrieve_without_fake_products(tmp_path):
    data = load_bench_data(shop_photo_folder(tmp_path / "d"))
    assert len(data.products) == 2  # no photo was turned into a product
    assert data.label_sets["gender"].views == ["query"]
    tasks = {t.name: t for t in build_tasks(data)}
    assert set(tasks) == {"shop-photos/retrieval/shop2catalogue", "shop-photos/attributes/gender/query"}
    gender = tasks["shop-photos/attributes/gender/query"]
    assert gender.items[0] == {"text": None, "image": str((tmp_path / "d/photos/shop1.png").resolve())}
    assert gender.items[2] == {"text": "dress", "image": None}
    assert gender.required_modalities == {"text", "image"}
    metrics = gender(RandomEncoder())
    assert 0.0 <= metrics["shop-photos/attributes/gender/query/accuracy"] <= 1.0
    retrieval = tasks["shop-photos/retrieval/shop2catalogue"](RandomEncoder())
    assert retrieval["shop-photos/retrieval/shop2catalogue/recall@1"] is not None


def test_a_new_gender_set_gets_neutral_prompts_not_the_fashion_ones(tmp_path):
    from benchmarks.prompts import BUILTIN_TEMPLATES, DEFAULT_TEMPLATES

    data = load_bench_data(shop_photo_folder(tmp_path / "d"))
    (task,) = build_tasks(data, ["gender"])
    assert task.templates_source == "default templates"
    assert task.prompts[task.label_set.classes.index("Men")] == [t.format(label="men") for t in DEFAULT_TEMPLATES]
    assert "fashion for men" not in sum(task.prompts, [])
    assert "fashion for {label}" in BUILTIN_TEMPLATES["fashion"]["gender"]


def test_label_set_templates_come_from_the_manifest(tmp_path):
    spec = {"templates": ["a shopper photo of {label}", "{label} customer"]}
    data = load_bench_data(shop_photo_folder(tmp_path / "d", gender_spec=spec))
    (task,) = build_tasks(data, ["gender"])
    assert task.templates_source == "manifest.json"
    assert task.prompts[task.label_set.classes.index("Women")] == ["a shopper photo of women", "women customer"]


def test_fashion_folder_keeps_its_built_in_prompts(tiny_fashion):
    (task,) = build_tasks(load_bench_data(tiny_fashion), ["gender"])
    assert task.templates_source == "built-in templates of data folder fashion"
    assert "fashion for men" in sum(task.prompts, [])


@pytest.mark.parametrize(
    ("spec", "rows", "message"),
    [
        ({"templates": ["no placeholder"]}, None, r"label_sets\.gender, field 'templates'"),
        ({"templates": "a photo of {label}"}, None, r"field 'templates'"),
        ({"views": ["image"]}, None, r"field 'views'.*\['query'\]"),
        (
            {},
            [{"id": "s1", "image": "photos/shop1.png", "label": "Women"}, {"product_id": "p1", "label": "Women"}],
            "mix",
        ),
        ({}, [{"id": "s1", "image": "photos/missing.png", "label": "Women"}], r"row 1, field 'image'.*not found"),
        ({}, [{"image": "photos/shop1.png", "label": "Women"}], r"row 1, field 'id'"),
    ],
)
def test_bad_label_items_and_templates_are_named(tmp_path, spec, rows, message):
    root = shop_photo_folder(tmp_path / "d", gender_spec=spec, gender_rows=rows)
    with pytest.raises(DataFormatError, match=message):
        load_bench_data(root)


def test_manifest_round_trips_the_templates(tmp_path):
    spec = {"templates": ["{label}"]}
    root = shop_photo_folder(tmp_path / "d", gender_spec=spec)
    assert json.loads((root / "manifest.json").read_text())["label_sets"]["gender"]["templates"] == ["{label}"]
