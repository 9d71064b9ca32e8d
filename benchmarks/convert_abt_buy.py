"""Convert Abt-Buy (Koepcke et al. 2010) into the benchmark data format: same-product matching.

    python -m benchmarks.convert_abt_buy --out runs/data/abt-buy

Products: every abt record (group "abt") and buy record (group "buy"), with name as title and the description.
Prices are left out: the two shops price the same item differently, and the task is about product identity.
Query set `matching`: each abt record that has a match in matches.csv queries the whole buy catalogue; its
positives are all its matched buy records.
"""

from __future__ import annotations

import argparse
import csv
import logging
from collections import defaultdict
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_SOURCE = Path(__file__).resolve().parents[1] / "../shared/data/abt-buy"


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found. Point --source at the folder with tableA.csv, tableB.csv and matches.csv."
        )
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _product(row: dict, group: str) -> dict:
    product = {
        "id": f"{group}-{row['id']}",
        "title": row["name"].strip(),
        "attributes": {},
        "images": [],
        "category": [],
        "group": group,
    }
    if row.get("description", "").strip():
        product["description"] = row["description"].strip()
    return product


def convert(source: Path, out: Path) -> Path:
    """Write the Abt-Buy data folder built from `source` into `out`."""
    from .data_format import write_bench_data

    table_a, table_b = _read_csv(source / "tableA.csv"), _read_csv(source / "tableB.csv")
    products = [_product(r, "abt") for r in table_a] + [_product(r, "buy") for r in table_b]
    positives = defaultdict(list)
    for row in _read_csv(source / "matches.csv"):
        positives[f"abt-{row['tableA_id']}"].append(f"buy-{row['tableB_id']}")
    queries = [
        {"id": p["id"], "product_id": p["id"], "positives": sorted(set(positives[p["id"]]))}
        for p in products
        if p["group"] == "abt" and positives.get(p["id"])
    ]
    spec = {
        "query_view": "product",
        "gallery_view": "product",
        "gallery_group": "buy",
        "description": "abt record -> the same product in the buy catalogue",
    }
    return write_bench_data(
        out,
        "abt-buy",
        products,
        {"matching": (spec, queries)},
        {},
        extra={"source": "Abt-Buy (Leipzig entity-resolution benchmark); see SOURCE.md"},
    )


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--source",
        type=Path,
        default=DEFAULT_SOURCE,
        help="folder with tableA.csv, tableB.csv, matches.csv (default: ../shared/data/abt-buy)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output data folder (created)")
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = convert(args.source, args.out)
    logger.info("wrote %s", out)
    return out


if __name__ == "__main__":
    main()
