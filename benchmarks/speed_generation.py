"""Stage-2 rollout speed: generated tokens per second of the path `Moon3GRPOTrainer` uses against plain `generate`, on
the shipped moon3-mini (repo root), side by side in one run.

    python -m benchmarks.speed_generation                      # 16 prompts x 32 tokens, 5 alternating repeats
    python -m benchmarks.speed_generation --batch-size 32 --new-tokens 64 --out runs/speed_generation.json

Sides (same prompts, same weights, every row made to generate exactly `--new-tokens` tokens):
  plain    `model.generate(...)` with sampling, as TRL's transformers path calls it
  rollout  the same call inside `GenerationRecorder` plus `completion_embeddings` (the one extra decode step and the
           fusion/projection head): what a stage-2 rollout costs, embeddings for the rank reward included
  paged    transformers' continuous batching (`model.generate_batch`, TRL's `use_transformers_continuous_batching`):
           tried once; the error is printed when MOON3 cannot run it (see `train.trainer.check_rollout_engine`)
Runs alternate plain, rollout, plain, ... and report medians and the median per-pair ratio.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO), help="MOON3 checkpoint folder (default: the repo root, mini)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generate call (queries x completions)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per row (every row, exactly)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per side (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--out", default=None, help="also write the results as JSON here (atomic); empty = print only")
    return parser


QUERIES = [
    "men navy blue casual shirt",
    "women red running shoes",
    "black leather watch for men",
    "summer cotton dress",
    "kids white sneakers",
    "grey track pants",
    "blue denim jacket women",
    "brown leather wallet",
]


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch
    from transformers import AutoModel, AutoProcessor

    from benchmarks.io_utils import atomic_write_json
    from train.grpo_embedding import GenerationRecorder, completion_embeddings

    if args.threads:
        torch.set_num_threads(args.threads)
    model = AutoModel.from_pretrained(args.model, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    config = model.config
    queries = [QUERIES[i % len(QUERIES)] for i in range(args.batch_size)]
    batch = processor(queries=queries, mode="reason")
    settings = dict(
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,  # every row generates exactly new_tokens: same work on both sides
        do_sample=True,
        temperature=1.0,
        eos_token_id=config.emb_token_id,
        pad_token_id=config.pad_token_id,
    )
    prompt_width = batch["input_ids"].shape[1]

    def plain():
        torch.manual_seed(args.seed)
        with torch.no_grad():
            return model.generate(**batch, **settings)

    def rollout():
        torch.manual_seed(args.seed)
        with torch.no_grad(), GenerationRecorder(model) as recorder:
            generated = model.generate(**batch, **settings)
            completions = [row.tolist() for row in generated[:, prompt_width:]]
            return completion_embeddings(model, recorder, completions)

    for side in (plain, rollout):  # warm-up: the first calls at a shape set up kernels
        side()
    times = {"plain": [], "rollout": []}
    for repeat in range(args.repeats):
        for name, side in (("plain", plain), ("rollout", rollout)):
            start = time.perf_counter()
            side()
            times[name].append(time.perf_counter() - start)
        logger.info(
            "repeat %d/%d | plain %.3f s | rollout %.3f s", repeat + 1, args.repeats, *(times[n][-1] for n in times)
        )
    tokens = args.batch_size * args.new_tokens
    results = {
        "model": args.model,
        "batch_size": args.batch_size,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "threads": args.threads,
        "tokens_per_second": {name: tokens / statistics.median(values) for name, values in times.items()},
        "rollout_over_plain_time": statistics.median(
            r / p for r, p in zip(times["rollout"], times["plain"], strict=True)
        ),
        "paged": try_continuous_batching(model, batch, settings),
    }
    print(f"\nGeneration on {args.model}: {args.batch_size} rows x {args.new_tokens} tokens, {args.threads} threads")
    print("| path | tokens/s (median) |\n|---|---|")
    for name, value in results["tokens_per_second"].items():
        print(f"| {name} | {value:.0f} |")
    print(f"rollout / plain time (median of pairs): {results['rollout_over_plain_time']:.3f}x")
    print(f"continuous batching (generate_batch): {results['paged']}")
    if args.out:
        atomic_write_json(args.out, results)
    return results


def try_continuous_batching(model, batch, settings) -> str:
    """Run transformers' continuous batching once on MOON3; return 'ran: N rows' or the error it raised."""
    from transformers import GenerationConfig

    prompt_ids = [
        ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
    ]
    try:
        outputs = model.generate_batch(prompt_ids, generation_config=GenerationConfig(**settings), progress_bar=False)
    except Exception as error:  # reported, not hidden: the point is to see whether MOON3 supports it
        return f"failed: {type(error).__name__}: {str(error).splitlines()[0][:300]}"
    failed = [output for output in outputs.values() if output.error]
    if failed or not outputs:
        errors = sorted({str(output.error).strip().splitlines()[-1][:300] for output in failed})
        return f"failed: {len(failed)}/{len(outputs)} requests: {errors}"
    return f"ran: {len(outputs)} rows (text-only prompt ids; images and MOON3's raw signals are not passed)"


if __name__ == "__main__":
    main()
