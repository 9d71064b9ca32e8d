"""Speed of the sentence-transformers path against the model's own embedding call, on the same batch.

    python -m benchmarks.speed_sentence_transformers                 # hidden 256, 4 layers, 64 items, 224x224
    python -m benchmarks.speed_sentence_transformers --repeats 7 --modes direct reason

Builds a small random MOON3, wraps it in `SentenceTransformer` (the same module a checkpoint loads) and times, for
products, queries and a mixed batch of both, `Moon3Model.encode` against `SentenceTransformer.encode*` over the same
items and batch size. Runs alternate A, B, A, B, ... and the table reports medians; target ratio <= 1.05x.
`measure(...)` returns the rows, so other speed scripts can print them in their own report.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

TARGET_RATIO = 1.05


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden-size", type=int, default=256, help="language-model hidden size D")
    parser.add_argument("--num-layers", type=int, default=4, help="decoder layers")
    parser.add_argument("--image-size", type=int, default=224, help="side of the square image each item carries (px)")
    parser.add_argument("--num-items", type=int, default=64, help="items per side (half products, half queries)")
    parser.add_argument("--batch-size", type=int, default=16, help="items per forward pass, both sides")
    parser.add_argument("--modes", nargs="+", default=["direct"], choices=["direct", "reason"], help="modes to time")
    parser.add_argument("--reasoning-tokens", type=int, default=8, help="reasoning budget in reason mode (tokens)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per side (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and images")
    return parser


def make_items(count: int, image_size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(products, queries): each item carries one noise image of `image_size` x `image_size`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = ["Navy Blue", "Black", "Red", "White", "Green"]
    types = ["Shirts", "Tshirts", "Shoes", "Watches", "Handbags"]

    def image():
        return Image.fromarray(rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8))

    products, queries = [], []
    for index in range(count):
        colour, kind = colours[index % len(colours)], types[index % len(types)]
        if index % 2 == 0:
            products.append(
                {
                    "title": f"Brand {index} {colour} {kind}",
                    "attributes": {"colour": colour, "type": kind},
                    "images": [image()],
                }
            )
        else:
            queries.append({"text": f"{colour.lower()} {kind.lower()} like this", "image": image()})
    return products, queries


def build_small_model(hidden_size: int, num_layers: int, seed: int, reasoning_tokens: int):
    """A random MOON3 (eval mode) with a tokenizer trained on a few lines, and its processor."""
    from train.build_checkpoint import build_random
    from train.build_tokenizer import train_tokenizer

    corpus = ["Brand Navy Blue Black Red White Green Shirts Tshirts Shoes Watches Handbags like this colour type"] * 50
    tokenizer = train_tokenizer(corpus, vocab_size=400)
    sizes = {"hidden_size": hidden_size, "num_layers": num_layers}
    model, processor = build_random(tokenizer, seed=seed, vlm_sizes=sizes, max_reasoning_tokens=reasoning_tokens)
    return model.eval(), processor


def wrap_in_sentence_transformer(model, processor):
    from sentence_transformers import SentenceTransformer

    from train.write_st_files import load_st_module

    module = load_st_module().Moon3SentenceTransformer(model, processor)
    return SentenceTransformer(
        modules=[module],
        prompts={"query": processor.query_instruction, "document": processor.product_instruction},
        similarity_fn_name="cosine",
        device=str(model.device),
    )


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def _cases(model, processor, st_model, products, queries, batch_size: int, mode: str) -> dict[str, tuple]:
    """{case: (the model's own call, the sentence-transformers call, item count)} over the same items."""

    def own_products():
        return model.encode(products, processor, kind="document", mode=mode, batch_size=batch_size)

    def own_queries():
        return model.encode(queries, processor, kind="query", mode=mode, batch_size=batch_size)

    return {
        "products": (
            own_products,
            lambda: st_model.encode_document(products, mode=mode, batch_size=batch_size),
            len(products),
        ),
        "queries": (
            own_queries,
            lambda: st_model.encode_query(queries, mode=mode, batch_size=batch_size),
            len(queries),
        ),
        "mixed": (
            lambda: (own_products(), own_queries()),
            lambda: st_model.encode(products + queries, mode=mode, batch_size=batch_size),
            len(products) + len(queries),
        ),
    }


def measure(
    model,
    processor,
    st_model,
    products: list[Any],
    queries: list[Any],
    batch_size: int = 16,
    modes: tuple[str, ...] = ("direct",),
    repeats: int = 3,
) -> list[dict]:
    """Median seconds of `Moon3Model.encode` vs `SentenceTransformer.encode*` on the same items, per case and mode.

    Returns one dict per (case, mode): `case`, `mode`, `items`, `model_encode_s`, `st_encode_s`, `ratio`
    (= st / model medians; <= 1.05 is the target) and `ratio_of_min` (= st / model fastest runs, which is less
    sensitive to other processes on a shared machine).
    """
    rows = []
    for mode in modes:
        cases = _cases(model, processor, st_model, products, queries, batch_size, mode)
        for case, (own_call, st_call, count) in cases.items():
            own_call(), st_call()  # warm-up: first-call allocations and lazy imports
            own_times, st_times = [], []
            for _ in range(repeats):
                own_times.append(_timed(own_call))
                st_times.append(_timed(st_call))
            own, st = statistics.median(own_times), statistics.median(st_times)
            rows.append(
                {
                    "case": case,
                    "mode": mode,
                    "items": count,
                    "model_encode_s": own,
                    "st_encode_s": st,
                    "ratio": st / own,
                    "ratio_of_min": min(st_times) / min(own_times),
                }
            )
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        "| case | mode | items | Moon3Model.encode (s) | SentenceTransformer.encode (s) | ratio | ratio of min | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        verdict = "ok" if row["ratio"] <= TARGET_RATIO else "over"
        lines.append(
            f"| {row['case']} | {row['mode']} | {row['items']} | {row['model_encode_s']:.3f} | {row['st_encode_s']:.3f} "
            f"| {row['ratio']:.3f}x | {row['ratio_of_min']:.3f}x | <= {TARGET_RATIO}x {verdict} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    args = make_parser().parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model, processor = build_small_model(args.hidden_size, args.num_layers, args.seed, args.reasoning_tokens)
    st_model = wrap_in_sentence_transformer(model, processor)
    products, queries = make_items(args.num_items, args.image_size, args.seed)
    rows = measure(model, processor, st_model, products, queries, args.batch_size, tuple(args.modes), args.repeats)
    print(
        f"MOON3 hidden {args.hidden_size}, {args.num_layers} layers, {args.num_items} items with one "
        f"{args.image_size}x{args.image_size} image each, batch {args.batch_size}, median of {args.repeats}, "
        f"{torch.get_num_threads()} threads"
    )
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()
