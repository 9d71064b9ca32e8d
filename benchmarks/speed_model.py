"""Speed of the MOON3 model itself, measured side by side in one run (ratios, not absolute times, are the point).

    python -m benchmarks.speed_model                       # small config: hidden 256, 4 layers, 224x224 images
    python -m benchmarks.speed_model --repeats 7 --reasoning-tokens 32

Prints three tables:
  (a) direct mode with fusion + FIRE on vs off (same weights)           target <= 1.10x
  (b) reason mode (generate + one <emb> step) vs generate alone          target <= 1.15x (no second prefill)
  (c) items per second in direct mode at several batch sizes
  (d) SentenceTransformer.encode vs the model's own encode on the same items   target <= 1.05x
Runs alternate A, B, A, B, ... and report medians, so machine noise hits both sides alike.
"""

from __future__ import annotations

import argparse
import statistics
import time


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden-size", type=int, default=256, help="language-model hidden size D")
    parser.add_argument("--num-layers", type=int, default=4, help="decoder layers")
    parser.add_argument("--image-size", type=int, default=224, help="side of the square image each item carries (px)")
    parser.add_argument("--batch-size", type=int, default=8, help="items per call in (a) and (b)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32], help="batch sizes for (c)")
    parser.add_argument("--reasoning-tokens", type=int, default=16, help="tokens generated in (b)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per side (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and images")
    return parser


def timed(function, repeats: int, warmup: int = 2) -> list[float]:
    # The first calls at a new shape are slow on the CPU (kernel set-up), so they are not timed.
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def alternate(first, second, repeats: int) -> dict[str, float]:
    """Time `first` and `second` alternately after warming both up.

    Returns the median seconds of each side, the median of the per-pair ratios first/second, and the ratio of the
    fastest runs; the last two barely move when other processes share the machine, the plain medians do.
    """
    timed(first, 0, warmup=3)
    timed(second, 0, warmup=3)
    a_times, b_times = [], []
    for _ in range(repeats):
        a_times += timed(first, 1, warmup=0)
        b_times += timed(second, 1, warmup=0)
    return {
        "first": statistics.median(a_times),
        "second": statistics.median(b_times),
        "pair_ratio": statistics.median(a / b for a, b in zip(a_times, b_times)),
        "min_ratio": min(a_times) / min(b_times),
    }


def make_items(count: int, image_size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(products, queries), each with one noise image; shared with the sentence-transformers speed script."""
    from benchmarks.speed_sentence_transformers import make_items as make_products_and_queries

    return make_products_and_queries(2 * count, image_size, seed)


def build_pair(args):
    """The same random weights with fusion + FIRE on and off, and the processor."""
    from train.build_checkpoint import build_random
    from train.build_tokenizer import train_tokenizer

    corpus = [item["title"] + " " + str(item["attributes"]) for item in make_items(64, 8, args.seed)[0]]
    tokenizer = train_tokenizer(corpus * 4, vocab_size=2000)
    sizes = {"hidden_size": args.hidden_size, "num_layers": args.num_layers}
    full, processor = build_random(
        tokenizer, seed=args.seed, vlm_sizes=sizes, embedding_dim=256, matryoshka_dims=[256]
    )
    plain, _ = build_random(
        tokenizer,
        seed=args.seed,
        vlm_sizes=sizes,
        embedding_dim=256,
        matryoshka_dims=[256],
        use_fusion=False,
        use_fire=False,
    )
    plain.load_state_dict(full.state_dict(), strict=False)
    return full.eval(), plain.eval(), processor


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    full, plain, processor = build_pair(args)
    items, queries = make_items(max(args.batch_size, max(args.batch_sizes)), args.image_size, args.seed)
    batch = processor(products=items[: args.batch_size])
    print(
        f"config: hidden {args.hidden_size}, {args.num_layers} layers, {args.image_size}x{args.image_size} image "
        f"per item, {batch['input_ids'].shape[1]} tokens per item (padded), {torch.get_num_threads()} threads"
    )

    with torch.inference_mode():
        times = alternate(lambda: full(**batch), lambda: plain(**batch), args.repeats)
        print("\n(a) direct mode, fusion + FIRE on vs off (same batch, same weights)")
        print("| batch | on (s) | off (s) | on / off, median of pairs | on / off, fastest runs | target |")
        print("|---:|---:|---:|---:|---:|---:|")
        print(
            f"| {args.batch_size} | {times['first']:.4f} | {times['second']:.4f} | {times['pair_ratio']:.3f} "
            f"| {times['min_ratio']:.3f} | <= 1.10 |"
        )

        think_end = full.config.think_end_token_id
        reason_batch = processor(products=items[: args.batch_size], mode="reason")
        tokens = args.reasoning_tokens
        # Both sides generate exactly `tokens` tokens: closing the reasoning early is suppressed on both.
        common = {"do_sample": False, "suppress_tokens": [think_end]}

        def reason():
            full.embed_with_reasoning(**reason_batch, max_reasoning_tokens=tokens, **common)

        def generate_only():
            full.generate(
                **reason_batch,
                max_new_tokens=tokens,
                eos_token_id=think_end,
                pad_token_id=full.config.pad_token_id,
                **common,
            )

        times = alternate(reason, generate_only, args.repeats)
        print(f"\n(b) reason mode ({tokens} reasoning tokens + one <emb> step) vs generate alone ({tokens} tokens)")
        print(
            "| batch | reason-mode embed (s) | generate (s) | ratio, median of pairs | ratio, fastest runs | target |"
        )
        print("|---:|---:|---:|---:|---:|---:|")
        print(
            f"| {args.batch_size} | {times['first']:.4f} | {times['second']:.4f} | {times['pair_ratio']:.3f} "
            f"| {times['min_ratio']:.3f} | <= 1.15 |"
        )

        print("\n(c) direct-mode throughput (fusion + FIRE on; processor time included)")
        print("| batch | items / s | model only (items / s) |")
        print("|---:|---:|---:|")
        for size in args.batch_sizes:
            sub_items = items[:size]
            end_to_end = statistics.median(
                timed(lambda items=sub_items: full(**processor(products=items)), args.repeats)
            )
            sub_batch = processor(products=sub_items)
            model_only = statistics.median(timed(lambda batch=sub_batch: full(**batch), args.repeats))
            print(f"| {size} | {size / end_to_end:.1f} | {size / model_only:.1f} |")

    from benchmarks.speed_sentence_transformers import format_table, measure, wrap_in_sentence_transformer

    st_model = wrap_in_sentence_transformer(full, processor)
    count = args.batch_size * 2
    rows = measure(
        full, processor, st_model, items[:count], queries[:count], args.batch_size, ("direct",), args.repeats
    )
    print(f"\n(d) SentenceTransformer.encode vs Moon3Model.encode, {count} products and {count} queries, direct mode")
    print(format_table(rows))


if __name__ == "__main__":
    main()
