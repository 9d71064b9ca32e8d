"""Converters on tiny synthetic data (local CSV, Hub-style rows, Abt-Buy) and, when present, the real data."""

import json

import pytest

from benchmarks.convert_fashion import brand_of, read_hub_rows, split_of
from benchmarks.data_format import load_bench_data
from benchmarks.encoders import flatten_product


def test_no_query_is_its_own_answer(tiny_fashion):
    data = load_bench_data(tiny_fashion)
    texts = {flatten_product(product): product["id"] for product in data.products}
    titles = {product["title"] for product in data.products}
    for name in ("text2product", "attribute_queries"):
        for query in data.query_sets[name].queries:
            assert query["text"] not in titles and query["text"] not in texts
    assert data.query_sets["image2product"].gallery_view == "product_text"  # the query photo is not in the gallery


def test_attribute_queries_have_all_matching_products(tiny_fashion):
    data = load_bench_data(tiny_fashion)
    keys = ("gender", "baseColour", "usage", "articleType")
    by_combo = {}
    for product in data.products:
        by_combo.setdefault(tuple(product["attributes"][k] for k in keys), []).append(product["id"])
    queries = data.query_sets["attribute_queries"].queries
    assert queries
    for query in queries:
        combos = {tuple(data.products[data.index[pid]]["attributes"][k] for k in keys) for pid in query["positives"]}
        assert len(combos) == 1 and len(query["positives"]) >= 2
        assert sorted(query["positives"]) == sorted(by_combo[combos.pop()])


def test_brand_is_words_before_gender():
    assert brand_of("Turtle Check Men Navy Blue Shirt") == "Turtle Check"
    assert brand_of("Nike Shoes") == "Nike"


def test_hub_rows_convert_like_local_rows(tmp_path, make_fashion_rows):
    from datasets import Dataset
    from PIL import Image

    from benchmarks.convert_fashion import convert

    rows = make_fashion_rows(tmp_path / "imgs", n=6)
    hub = Dataset.from_list(
        [
            {
                **{k: v for k, v in r.items() if k not in ("split", "image")},
                "id": int(r["id"]),
                "image": Image.open(r["image"]).convert("RGB"),
            }
            for r in rows
        ]
    )
    data = load_bench_data(convert(read_hub_rows(hub), tmp_path / "hub"))
    assert [p["id"] for p in data.products] == [r["id"] for r in rows]
    assert all((data.root / p["images"][0]).is_file() for p in data.products)


def test_convert_fashion_cli_rejects_missing_source(tmp_path):
    from benchmarks.convert_fashion import main

    with pytest.raises(FileNotFoundError, match="--source"):
        main(["--source", str(tmp_path / "none"), "--out", str(tmp_path / "out")])


def test_abt_buy_queries_search_buy_catalogue(tiny_abt_buy):
    data = load_bench_data(tiny_abt_buy)
    matching = data.query_sets["matching"]
    assert matching.gallery_group == "buy" and len(data.gallery("buy")) == 7
    positives = {q["product_id"]: q["positives"] for q in matching.queries}
    assert positives == {"abt-0": ["buy-0", "buy-6"], "abt-1": ["buy-1"], "abt-2": ["buy-2"], "abt-3": ["buy-3"]}


def test_real_fashion_split_rule_and_counts(shared_data, tmp_path):
    import csv

    with open(shared_data / "fashion-product-images/products.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(split_of(r["id"]) == r["split"] for r in rows)
    from benchmarks.convert_fashion import main

    data = load_bench_data(main(["--out", str(tmp_path / "fashion")]))
    assert len(data.products) == 993
    assert json.loads((data.root / "manifest.json").read_text())["split"] == "test"


def test_real_abt_buy_has_1064_queries(shared_data, tmp_path):
    from benchmarks.convert_abt_buy import main

    data = load_bench_data(main(["--out", str(tmp_path / "abt")]))
    assert len(data.query_sets["matching"].queries) == 1064
    assert len(data.gallery("buy")) == 1064
