"""Quick retrieval probe of a MOON3 checkpoint on a few products: does it match titles, photos, attribute text?

    python -m benchmarks.probe_retrieval --model .                                  # the root checkpoint
    python -m benchmarks.probe_retrieval --model runs/mini/stage1 --train-rows runs/data/fashion_train.jsonl

Prints top-1 accuracy (and chance) of, against the first `--num-products` test-split products (title, attributes,
photo): the exact title as a text query, the product photo as an image query, and "gender colour type" text.
With `--train-rows` (the stage-1 JSONL), also top-1 of the first `--num-products` image-query training rows against
their own positives, and the mean cosine between those query embeddings (near 1 = they collapsed to one vector).
It is a probe for diagnosing training, not a benchmark: `benchmarks.run` is the benchmark.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fashion-product-images"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="MOON3 checkpoint folder")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="fashion-product-images folder")
    parser.add_argument("--train-rows", type=Path, default=None, help="stage-1 JSONL; omitted = skip that probe")
    parser.add_argument("--num-products", type=int, default=60, help="products (and training rows) probed")
    parser.add_argument("--batch-size", type=int, default=20, help="items per forward pass")
    return parser


def top1(queries, documents) -> float:
    import torch

    return (queries @ documents.T).argmax(dim=1).eq(torch.arange(len(documents))).float().mean().item()


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = make_parser().parse_args(argv)
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(args.model, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)

    def encode(items, kind):
        return model.encode(items, processor, kind=kind, batch_size=args.batch_size)

    with (args.data / "products.csv").open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == "test"][: args.num_products]
    photos = [str(args.data / row["image"]) for row in rows]
    documents = encode(
        [
            {
                "title": row["productDisplayName"],
                "attributes": {key: row[key] for key in ("gender", "articleType", "baseColour", "usage")},
                "images": [photo],
            }
            for row, photo in zip(rows, photos, strict=True)
        ],
        "document",
    )
    results = {
        "test title -> product": top1(encode([row["productDisplayName"] for row in rows], "query"), documents),
        "test photo -> product": top1(encode([{"image": photo} for photo in photos], "query"), documents),
        "test 'gender colour type' -> product": top1(
            encode([f"{r['gender']} {r['baseColour']} {r['articleType']}".lower() for r in rows], "query"), documents
        ),
    }
    chance = {"chance": 1 / len(rows)}
    if args.train_rows is not None:
        pairs = [json.loads(line) for line in args.train_rows.open()]
        pairs = [pair for pair in pairs if (pair["query"] or {}).get("image")][: args.num_products]

        def clean(item):
            return {key: value for key, value in item.items() if value is not None}

        queries = encode([clean(pair["query"]) for pair in pairs], "query")
        positives = encode([clean(pair["positive"]) for pair in pairs], "document")
        results["train image query -> its positive"] = top1(queries, positives)
        results["train image queries: mean pairwise cosine"] = (queries @ queries.T).mean().item()
        chance["chance (train rows)"] = 1 / len(pairs)
    for name, value in {**results, **chance}.items():
        print(f"{name:45s} {value:.3f}")
    return results


if __name__ == "__main__":
    main()
