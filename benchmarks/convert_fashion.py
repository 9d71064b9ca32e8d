"""Convert the fashion catalogue (Myntra "Fashion Product Images (Small)") into the benchmark data format.

    python -m benchmarks.convert_fashion --out runs/data/fashion                 # local copy in ../shared/data
    python -m benchmarks.convert_fashion --hub --out runs/data/fashion           # ashraq/fashion-product-images-small

Only the fixed test split is used for evaluation (split = test when sha256(str(id)) mod 10 == 0; the Hub
version has no split column, so the same rule is applied). Queries are built so that no query is its own answer
in the gallery: text→image / image→text cross modalities; text→product queries are attribute paraphrases
("navy blue shirts by turtle for men"), never a title; image→product galleries hold title + attributes without
photos; attribute queries ("men navy blue casual shirts") have every matching product as a positive. The galleries
of the two attribute-derived query sets show title + photo but not the attribute fields, so a model must read the
title and the photo rather than string-match the structured fields the queries were generated from.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
from collections import defaultdict
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_SOURCE = Path(__file__).resolve().parents[1] / "../shared/data/fashion-product-images"
HUB_ID = "ashraq/fashion-product-images-small"
CATEGORY_FIELDS = ("masterCategory", "subCategory", "articleType")
ATTRIBUTE_FIELDS = ("gender", "baseColour", "usage", "season")
GENDER_WORDS = ("Men", "Women", "Boys", "Girls", "Unisex")


def split_of(product_id) -> str:
    """The fixed split of a product id: test if sha256(str(id)) mod 10 == 0, val if 1, else train."""
    bucket = int(hashlib.sha256(str(product_id).encode()).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


def _clean(value) -> str:
    text = "" if value is None else str(value).strip()
    return "" if text.lower() in ("", "nan", "none") else text


def read_local_rows(source: Path) -> list[dict]:
    """Rows of products.csv as dicts; `image` is the absolute path of the photo."""
    import csv

    path = source / "products.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"--source {source}: products.csv not found. Point --source at the folder that "
            "holds products.csv and images/, or use --hub."
        )
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["image"] = str((source / row["image"]).resolve())
    return rows


def read_hub_rows(dataset) -> list[dict]:
    """Rows of the Hub dataset (an iterable of dicts with a PIL `image`), with the split column computed."""
    rows = []
    for record in dataset:
        row = {k: v for k, v in record.items()}
        row["split"] = split_of(row["id"])
        rows.append(row)
    return rows


def brand_of(title: str) -> str:
    """The words of the title before its gender word ("Turtle Check Men Navy Blue Shirt" -> "Turtle Check")."""
    words = title.split()
    for i, word in enumerate(words):
        if word in GENDER_WORDS and i > 0:
            return " ".join(words[:i])
    return words[0] if words else ""


def make_product(row: dict, image_rel: str) -> dict:
    """Benchmark product record of one catalogue row."""
    attributes = {k: _clean(row.get(k)) for k in ("articleType",) + ATTRIBUTE_FIELDS if _clean(row.get(k))}
    return {
        "id": str(row["id"]),
        "title": _clean(row["productDisplayName"]),
        "attributes": attributes,
        "images": [image_rel],
        "category": [_clean(row.get(k)) for k in CATEGORY_FIELDS if _clean(row.get(k))],
    }


def _grouped(products: list[dict], key) -> dict:
    groups = defaultdict(list)
    for p in products:
        k = key(p)
        if k is not None:
            groups[k].append(p["id"])
    return groups


def _cap(rows: list[dict], limit: int, seed: int) -> list[dict]:
    import random

    if limit <= 0 or len(rows) <= limit:
        return rows
    keep = set(random.Random(seed).sample(range(len(rows)), limit))
    return [r for i, r in enumerate(rows) if i in keep]


def build_query_sets(products: list[dict], max_queries: int, seed: int) -> dict:
    """The five fashion query sets as {name: (manifest spec, rows)}."""
    from .encoders import flatten_product

    by_title = _grouped(products, lambda p: p["title"])
    text2image = [{"id": f"t2i-{i}", "text": t, "positives": ids} for i, (t, ids) in enumerate(by_title.items())]
    image2text = [
        {"id": f"i2t-{p['id']}", "image": p["images"][0], "positives": by_title[p["title"]]} for p in products
    ]

    def paraphrase(p):
        a = p["attributes"]
        if not all(a.get(k) for k in ("baseColour", "articleType", "gender")):
            return None
        return f"{a['baseColour']} {a['articleType']} by {brand_of(p['title'])} for {a['gender']}".lower()

    by_paraphrase = _grouped(products, paraphrase)
    titles = {p["title"].lower() for p in products}
    text2product = [
        {"id": f"t2p-{i}", "text": t, "positives": ids}
        for i, (t, ids) in enumerate(sorted(by_paraphrase.items()))
        if t not in titles
    ]
    by_text = _grouped(products, lambda p: flatten_product({**p, "images": []}))
    image2product = [
        {"id": f"i2p-{p['id']}", "image": p["images"][0], "positives": by_text[flatten_product({**p, "images": []})]}
        for p in products
    ]

    def combo(p):
        a = p["attributes"]
        keys = ("gender", "baseColour", "usage", "articleType")
        if not all(a.get(k) for k in keys):
            return None
        # "men black casual casual shoes" -> "men black casual shoes": skip the usage word when the type has it
        words = [a[k] for k in keys if k != "usage" or a["usage"].lower() not in a["articleType"].lower()]
        return " ".join(words).lower()

    attribute = [
        {"id": f"attr-{i}", "text": t, "positives": ids}
        for i, (t, ids) in enumerate(sorted(_grouped(products, combo).items()))
        if len(ids) >= 2
    ]
    return {
        "text2image": (
            {"gallery_view": "image", "description": "title -> photo"},
            _cap(text2image, max_queries, seed),
        ),
        "image2text": (
            {"gallery_view": "title", "description": "photo -> title"},
            _cap(image2text, max_queries, seed),
        ),
        "text2product": (
            {"gallery_view": "title_image", "description": "attribute paraphrase with brand -> product"},
            _cap(text2product, max_queries, seed),
        ),
        "image2product": (
            {"gallery_view": "product_text", "description": "photo -> product text (no photos)"},
            _cap(image2product, max_queries, seed),
        ),
        "attribute_queries": (
            {"gallery_view": "title_image", "description": "gender colour usage type -> all matches"},
            _cap(attribute, max_queries, seed),
        ),
    }


def build_label_sets(rows: list[dict], products: list[dict]) -> dict:
    """Category levels (predicted from the photo and, separately, the title) and attributes (photo only)."""
    label_sets = {}
    for field_name in CATEGORY_FIELDS + ATTRIBUTE_FIELDS:
        labels = [
            {"product_id": p["id"], "label": _clean(r.get(field_name))}
            for r, p in zip(rows, products)
            if _clean(r.get(field_name))
        ]
        kind = "category" if field_name in CATEGORY_FIELDS else "attribute"
        views = ["image", "title"] if kind == "category" else ["image"]
        level = CATEGORY_FIELDS.index(field_name) + 1 if kind == "category" else None
        spec = {"kind": kind, "views": views, "classes": sorted({r["label"] for r in labels})}
        if level:
            spec["level"] = level
        label_sets[field_name] = (spec, labels)
    return label_sets


def convert(rows: list[dict], out: Path, split: str = "test", max_queries: int = 1000, seed: int = 0) -> Path:
    """Write the data folder for the rows of `split`; photos are copied (paths) or saved (PIL) to out/images/."""
    from .data_format import write_bench_data

    rows = [r for r in rows if r.get("split") == split and _clean(r.get("productDisplayName"))]
    if not rows:
        raise ValueError(f"no rows with split == {split!r} and a productDisplayName; check --split and the source")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    products = []
    for row in rows:
        rel = f"images/{row['id']}.jpg"
        image = row["image"]
        if isinstance(image, (str, Path)):
            shutil.copyfile(image, out / rel)
        else:
            image.convert("RGB").save(out / rel, format="JPEG", quality=95)
        products.append(make_product(row, rel))
    return write_bench_data(
        out,
        "fashion",
        products,
        build_query_sets(products, max_queries, seed),
        build_label_sets(rows, products),
        extra={"source": "Myntra Fashion Product Images (Small); see SOURCE.md", "split": split},
    )


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # where the catalogue comes from
    parser.add_argument(
        "--source",
        type=Path,
        default=DEFAULT_SOURCE,
        help="folder with products.csv and images/ (default: ../shared/data/fashion-product-images)",
    )
    parser.add_argument("--hub", action="store_true", help=f"read the catalogue from the Hub ({HUB_ID}) instead")
    parser.add_argument("--hub-id", default=HUB_ID, help="Hub dataset id used with --hub")
    # what to write
    parser.add_argument("--out", type=Path, required=True, help="output data folder (created)")
    parser.add_argument(
        "--split",
        default="test",
        choices=("test", "val", "train"),
        help="fixed split to convert; evaluation uses test",
    )
    parser.add_argument(
        "--max-queries", type=int, default=1000, help="cap per query set, sampled with --seed (0 = no cap)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the query sampling")
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.hub:
        from datasets import load_dataset

        rows = read_hub_rows(load_dataset(args.hub_id, split="train"))
    else:
        rows = read_local_rows(args.source)
    out = convert(rows, args.out, split=args.split, max_queries=args.max_queries, seed=args.seed)
    logger.info("wrote %s", out)
    return out


if __name__ == "__main__":
    main()
