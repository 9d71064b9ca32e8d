"""Reading catalogues: every bad row becomes a reject with its file, row, id and field; good rows come through."""

from __future__ import annotations

import pytest
from catalog_data import BAD_ROWS, good_products, write_jsonl

from catalog.records import read_catalog


def test_bad_rows_are_rejected_with_row_id_and_field(catalogue):
    products, rejects = read_catalog(catalogue)
    assert [p["id"] for p in products] == [f"p{i}" for i in range(8)]
    found = {(r.row, r.id, r.field) for r in rejects}
    assert found == {(4, "bad-image", "images[0]"), (7, "bad-field", "colour"), (8, None, "row"),
                     (12, "bad-type", "attributes"), (13, "p0", "id")}  # fmt: skip
    assert all(r.source == "products.jsonl" for r in rejects)
    duplicate = next(r for r in rejects if r.field == "id")
    assert "row 1" in duplicate.error


def test_products_keep_source_row_and_absolute_image_paths(catalogue):
    products, _ = read_catalog(catalogue)
    first = products[0]
    assert first["source"] == "products.jsonl" and first["row"] == 1
    assert first["images"] == [str((catalogue.parent / "images" / "p0.png").resolve())]
    assert products[2]["images"] == []


def test_unreadable_image_is_rejected(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "fake.png").write_bytes(b"not an image")
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "title": "A", "images": ["images/fake.png"]}])
    products, rejects = read_catalog(path)
    assert products == [] and rejects[0].field == "images[0]" and "cannot be read" in rejects[0].error


def test_parquet_folder_with_map_attributes_and_nulls(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = good_products(tmp_path / "images", n=3)
    table = pa.table(
        {
            "id": [r["id"] for r in rows] + ["x"],
            "title": [r["title"] for r in rows] + [None],
            "attributes": pa.array(
                [list(r["attributes"].items()) for r in rows] + [[]], pa.map_(pa.string(), pa.string())
            ),
            "images": [r["images"] for r in rows] + [None],
        }
    )
    pq.write_table(table, tmp_path / "part-0.parquet")
    write_jsonl(tmp_path / "part-1.jsonl", [{"id": "j1", "title": "From JSONL"}])
    products, rejects = read_catalog(tmp_path)
    assert [p["id"] for p in products] == ["p0", "p1", "p2", "j1"]
    assert products[0]["attributes"] == rows[0]["attributes"]
    assert [(r.source, r.row, r.id, r.field) for r in rejects] == [("part-0.parquet", 4, "x", "title")]


def test_input_that_is_not_a_catalogue_is_refused(tmp_path):
    (tmp_path / "products.csv").write_text("id,title\n")
    with pytest.raises(ValueError, match="neither .jsonl nor .parquet"):
        read_catalog(tmp_path / "products.csv")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_catalog(tmp_path / "nothing")


def test_bad_rows_fixture_covers_each_field():
    assert [field for _, field in BAD_ROWS] == ["images[0]", "colour", "attributes", "id"]
