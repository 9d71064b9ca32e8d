"""Tiny catalogue data for the catalogue tests: JSONL + PNG photos with some bad rows, built in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

COLOURS = {"Red": (220, 20, 20), "Navy Blue": (20, 20, 120), "Black": (10, 10, 10), "White": (240, 240, 240)}
TITLES = [
    ("Nike Women Red Running Shoes", "Women", "Red", "Shoes"),
    ("Turtle Check Men Navy Blue Shirt", "Men", "Navy Blue", "Shirts"),
    ("Puma Men Black Track Pants", "Men", "Black", "Track Pants"),
    ("Fabindia Women White Kurta", "Women", "White", "Kurtas"),
]


def good_products(image_dir: Path, n: int = 8) -> list[dict]:
    """`n` valid product rows with 32x32 single-colour photos saved under `image_dir` (paths relative to its parent)."""
    from PIL import Image

    image_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        title, gender, colour, article = TITLES[i % len(TITLES)]
        name = f"p{i}.png"
        Image.new("RGB", (32, 32), COLOURS[colour]).save(image_dir / name)
        rows.append(
            {
                "id": f"p{i}",
                "title": f"{title} {i}",
                "attributes": {"gender": gender, "baseColour": colour, "articleType": article},
                "images": [f"{image_dir.name}/{name}"] if i % 3 != 2 else [],  # every third product has no photo
            }
        )
    return rows


BAD_ROWS = [
    ({"id": "bad-image", "title": "Lost photo", "images": ["images/missing.png"]}, "images[0]"),
    ({"id": "bad-field", "title": "Has colour", "colour": "Red"}, "colour"),
    ({"id": "bad-type", "title": "Wrong attributes", "attributes": ["Red"]}, "attributes"),
    ({"id": "p0", "title": "Duplicate of p0"}, "id"),
]


def write_jsonl(path: Path, rows: list) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def embed_args(model, input_path, out, *extra) -> list[str]:
    return ["--model", str(model), "--input", str(input_path), "--out", str(out), "--no-progress", *extra]


def tiny_bench_fashion(root: Path, n: int = 12) -> Path:
    """A benchmark data folder (benchmarks.convert_fashion's output) of `n` test-split products, built in `root`."""
    from PIL import Image

    from benchmarks.convert_fashion import convert, split_of

    (root / "src").mkdir(parents=True, exist_ok=True)
    rows, product_id = [], 1000
    while len(rows) < n:
        product_id += 1
        if split_of(product_id) != "test":
            continue
        title, gender, colour, article = TITLES[len(rows) % len(TITLES)]
        path = root / "src" / f"{product_id}.jpg"
        Image.new("RGB", (16, 16), COLOURS[colour]).save(path)
        brand = f"{title.split()[0]}{len(rows) // len(TITLES)}"  # Nike0, Turtle0, ..., Nike1: unique per product
        rows.append(
            {"id": str(product_id), "split": "test", "productDisplayName": f"{brand} {gender} {colour} {article}",
             "gender": gender, "masterCategory": "Apparel", "subCategory": "Topwear", "articleType": article,
             "baseColour": colour, "season": "Fall", "year": "2012", "usage": "Casual", "image": str(path)}
        )  # fmt: skip
    return convert(rows, root / "fashion")
