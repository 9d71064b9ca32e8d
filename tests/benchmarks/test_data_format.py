"""Loading a data folder: valid folders load, broken ones fail with file, row and field in the message."""

import json

import pytest

from benchmarks.data_format import DataFormatError, load_bench_data, product_view


def _rewrite_line(path, line_no, change):
    lines = path.read_text().splitlines()
    row = json.loads(lines[line_no - 1])
    change(row)
    lines[line_no - 1] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")


def test_tiny_fashion_loads(tiny_fashion):
    data = load_bench_data(tiny_fashion)
    assert data.name == "fashion" and len(data.products) == 24
    assert set(data.query_sets) == {"text2image", "image2text", "text2product", "image2product", "attribute_queries"}
    assert data.label_sets["articleType"].kind == "category"
    assert len(data.hash) == 64


def test_missing_title_names_file_row_and_field(tiny_fashion):
    _rewrite_line(tiny_fashion / "products.jsonl", 3, lambda r: r.pop("title"))
    with pytest.raises(DataFormatError, match=r"products\.jsonl, row 3, field 'title'"):
        load_bench_data(tiny_fashion)


def test_unknown_positive_names_query_file(tiny_fashion):
    _rewrite_line(tiny_fashion / "queries/text2image.jsonl", 2, lambda r: r.update(positives=["nope"]))
    with pytest.raises(DataFormatError, match=r"queries/text2image\.jsonl, row 2, field 'positives'"):
        load_bench_data(tiny_fashion)


def test_missing_image_is_reported(tiny_fashion):
    first = json.loads((tiny_fashion / "products.jsonl").read_text().splitlines()[0])
    (tiny_fashion / first["images"][0]).unlink()
    with pytest.raises(DataFormatError, match=r"row 1, field 'images'.*not found"):
        load_bench_data(tiny_fashion)


def test_bad_json_line_is_reported(tiny_fashion):
    path = tiny_fashion / "labels/gender.jsonl"
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(DataFormatError, match=r"labels/gender\.jsonl, row 25, field '<json>'"):
        load_bench_data(tiny_fashion)


def test_wrong_version_is_reported(tiny_fashion):
    manifest = json.loads((tiny_fashion / "manifest.json").read_text())
    manifest["version"] = 99
    (tiny_fashion / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataFormatError, match=r"manifest\.json, field 'version'"):
        load_bench_data(tiny_fashion)


def test_unknown_gallery_view_is_reported(tiny_fashion):
    manifest = json.loads((tiny_fashion / "manifest.json").read_text())
    manifest["query_sets"]["text2image"]["gallery_view"] = "video"
    (tiny_fashion / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataFormatError, match=r"query_sets\.text2image, field 'gallery_view'"):
        load_bench_data(tiny_fashion)


def test_missing_manifest_says_how_to_fix(tmp_path):
    with pytest.raises(DataFormatError, match="converter"):
        load_bench_data(tmp_path)


def test_views_hide_what_they_should(tmp_path):
    product = {"id": "1", "title": "T", "attributes": {"colour": "Red"}, "images": ["a.jpg"]}
    assert product_view(product, "product_text", tmp_path)["images"] == []
    assert product_view(product, "title_image", tmp_path)["attributes"] == {}
    assert product_view(product, "image", tmp_path) == {"id": "1", "text": None, "image": str(tmp_path / "a.jpg")}
