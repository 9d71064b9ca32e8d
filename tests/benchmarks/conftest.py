"""Fixtures for the benchmark tests: tiny synthetic data folders built in tmp_path, and the real data when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = (REPO_ROOT / "../shared/data").resolve()

COLOURS = {"Red": (220, 20, 20), "Blue": (20, 20, 220), "Black": (10, 10, 10)}


def fashion_rows(image_dir: Path, n: int = 24) -> list[dict]:
    """Catalogue rows in the products.csv layout, with 16x16 single-colour JPEGs; every split rule respected."""
    from PIL import Image

    from benchmarks.convert_fashion import split_of

    image_dir.mkdir(parents=True, exist_ok=True)
    rows, product_id = [], 1000
    types = [
        ("Apparel", "Topwear", "Shirts"),
        ("Footwear", "Shoes", "Casual Shoes"),
        ("Accessories", "Bags", "Handbags"),
    ]
    while len(rows) < n:
        product_id += 1
        if split_of(product_id) != "test":
            continue
        colour = list(COLOURS)[len(rows) % 3]
        master, sub, article = types[(len(rows) // 3) % 3]
        gender = ["Men", "Women"][len(rows) % 2]
        path = image_dir / f"{product_id}.jpg"
        Image.new("RGB", (16, 16), COLOURS[colour]).save(path)
        rows.append(
            {
                "id": str(product_id),
                "split": "test",
                "productDisplayName": f"Brand{len(rows) % 4} {gender} {colour} {article}",
                "gender": gender,
                "masterCategory": master,
                "subCategory": sub,
                "articleType": article,
                "baseColour": colour,
                "season": "Fall",
                "year": "2012",
                "usage": "Casual",
                "image": str(path),
            }
        )
    return rows


@pytest.fixture
def make_fashion_rows():
    """The `fashion_rows(image_dir, n)` builder, for tests that need raw catalogue rows."""
    return fashion_rows


@pytest.fixture
def tiny_fashion(tmp_path) -> Path:
    """A converted synthetic fashion folder (24 test products)."""
    from benchmarks.convert_fashion import convert

    return convert(fashion_rows(tmp_path / "src_images"), tmp_path / "fashion")


@pytest.fixture
def tiny_abt_buy_source(tmp_path) -> Path:
    """tableA/tableB/matches.csv with 6 + 7 products and 5 matches (one abt record with two matches)."""
    src = tmp_path / "abt_src"
    src.mkdir()
    names = [
        "Sony Turntable PSLX350H",
        "Bose Speaker AM53BK",
        "Canon Camera SD1100",
        "Apple iPod Nano 8GB",
        "Panasonic DVD Player S29",
        "Weber Gas Grill",
    ]
    (src / "tableA.csv").write_text(
        "id,name,description,price\n" + "".join(f'{i},{n},"{n} with extras",{i}.0\n' for i, n in enumerate(names))
    )
    b_names = [
        "Sony PS-LX350H Turntable",
        "Bose AM5 speaker system",
        "Canon PowerShot SD1100 IS",
        "iPod nano 8 GB",
        "Panasonic DVD-S29",
        "Linksys Router",
        "Sony PSLX350H belt turntable",
    ]
    rows_b = "".join(f"{i},{n},,\n" for i, n in enumerate(b_names))
    (src / "tableB.csv").write_text("id,name,description,price\n" + rows_b)
    (src / "matches.csv").write_text("tableA_id,tableB_id\n0,0\n0,6\n1,1\n2,2\n3,3\n")
    return src


@pytest.fixture
def tiny_abt_buy(tmp_path, tiny_abt_buy_source) -> Path:
    from benchmarks.convert_abt_buy import convert

    return convert(tiny_abt_buy_source, tmp_path / "abt-buy")


@pytest.fixture
def shared_data() -> Path:
    """The real data folder next to the checkout; skips when it is absent."""
    if not (SHARED_DATA / "fashion-product-images" / "products.csv").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA
