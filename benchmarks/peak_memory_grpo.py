"""Peak memory of one stage-2 step (Moon3GRPOTrainer) against one plain TRL GRPOTrainer step on the same backbone.

    python -m benchmarks.peak_memory_grpo                      # vocabulary 151,936 (Qwen3-VL's), hidden 64
    python -m benchmarks.peak_memory_grpo --out runs/bench/peak_memory_grpo.json

The backbone is a random Qwen3-VL with a small hidden size and Qwen3-VL's full vocabulary, so that the LM head's
logits dominate the step's memory: that is where a head that builds full (completions x positions x vocabulary)
float32 logits shows (16 x 129 x 151,936 x 4 bytes = 1.25 GB). MOON3 wraps that backbone (fusion, FIRE, projection);
the plain run trains the backbone alone with TRL's own fused, tiled LM head. Both take the same prompts (the built-in
synthetic catalogue's text queries, through the same processor), the same batch (`--completions` completions of
`--completion-length` tokens; a random model over 151,936 tokens almost never samples its end token, so every
completion runs to full length) and one optimizer step each (generation, rewards, loss, backward, AdamW).

Each variant runs in its own subprocess, one after the other. Peak memory is the highest resident set size sampled
every 2 ms during `trainer.train()` minus the resident set size just before it (model, data and libraries already
loaded): what the step itself adds. The absolute peak is printed too. Resident memory includes what the allocator
keeps, so the figures are upper bounds of the tensors' own sizes; the ratio is what the check reads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: its imports would not resolve, and no script edits sys.path
    raise SystemExit(
        "Run benchmarks/peak_memory_grpo.py as a module from the repo root: `python -m benchmarks.peak_memory_grpo ...`."
    )

QWEN3_VL_VOCAB = 151_936
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=QWEN3_VL_VOCAB, help="backbone vocabulary size")
    parser.add_argument("--hidden-size", type=int, default=64, help="backbone hidden size (small: the head dominates)")
    parser.add_argument("--num-layers", type=int, default=2, help="decoder layers")
    parser.add_argument(
        "--completions", type=int, default=16, help="completions per step (per_device_train_batch_size)"
    )
    parser.add_argument("--num-generations", type=int, default=4, help="completions per query (G)")
    parser.add_argument("--completion-length", type=int, default=128, help="max_completion_length in tokens")
    parser.add_argument("--limit", type=float, default=1.2, help="largest accepted MOON3 / plain ratio of step peaks")
    parser.add_argument("--variant", choices=["both", "moon3", "trl"], default="both", help="run one side only")
    parser.add_argument("--out", type=Path, default=None, help="also write the results JSON here (atomically)")
    return parser


class PeakRSS:
    """Context manager sampling this process's resident set size (bytes) every `interval` seconds."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.peak = self.start = 0
        self._stop = threading.Event()

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * PAGE_BYTES

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval)

    def __enter__(self):
        self.start = self.peak = self.current()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def build(args):
    """(MOON3 model, plain Qwen3-VL backbone, processor, dataset), the backbone random with `args.vocab_size`."""
    import torch
    from datasets import Dataset
    from transformers import AutoConfig, AutoModelForImageTextToText

    from moon3.modeling_moon3 import Moon3Model
    from moon3.processing_moon3 import Moon3Processor
    from tests.conftest import TINY_CORPUS
    from train.build_checkpoint import build_image_processor, moon3_config, small_vlm_config
    from train.build_tokenizer import train_tokenizer
    from train.data import synthetic_rows, to_grpo_dataset

    tokenizer = train_tokenizer(TINY_CORPUS, vocab_size=400)
    vlm = small_vlm_config(tokenizer, hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=4)
    vlm["text_config"]["vocab_size"] = args.vocab_size  # ids past the tokenizer's decode to ''
    vlm_config = AutoConfig.for_model(**vlm)
    torch.manual_seed(0)
    moon3 = Moon3Model(moon3_config(vlm_config, tokenizer, embedding_dim=32, matryoshka_dims=[32]))
    processor = Moon3Processor(
        image_processor=build_image_processor("qwen3_vl", min_pixels=32 * 32, max_pixels=64 * 64),
        tokenizer=tokenizer,
        product_instruction=moon3.config.product_instruction,
        query_instruction=moon3.config.query_instruction,
    )
    torch.manual_seed(0)
    plain = AutoModelForImageTextToText.from_config(vlm_config)
    rows = synthetic_rows(args.completions // args.num_generations)
    return moon3, plain, processor, to_grpo_dataset(Dataset.from_list(rows), processor)


def grpo_settings(args, out_dir: str) -> dict:
    return dict(
        output_dir=out_dir,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        per_device_train_batch_size=args.completions,
        num_generations=args.num_generations,
        max_completion_length=args.completion_length,
        max_steps=1,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        beta=0.0,
    )


def run_variant(args) -> dict:
    """Build one side's trainer, then measure its one optimizer step."""
    import tempfile

    from trl import GRPOConfig, GRPOTrainer

    from train.config import Moon3GRPOConfig
    from train.rewards import moon3_reward_funcs
    from train.trainer import Moon3GRPOTrainer

    moon3, plain, processor, dataset = build(args)
    with tempfile.TemporaryDirectory() as out_dir:
        if args.variant == "moon3":
            del plain
            trainer = Moon3GRPOTrainer(
                model=moon3,
                args=Moon3GRPOConfig(**grpo_settings(args, out_dir)),
                train_dataset=dataset,
                processing_class=processor,
            )
        else:
            del moon3
            config = moon3_config_ids(processor)
            # the format and length rewards (the rank reward needs MOON3's candidates)
            rewards = moon3_reward_funcs(config["think_end"], config["emb"], 64)[1:]
            trainer = GRPOTrainer(
                model=plain,
                reward_funcs=rewards,
                args=GRPOConfig(**grpo_settings(args, out_dir)),
                train_dataset=dataset,
                processing_class=processor,
            )
        parameters = sum(p.numel() for p in trainer.model.parameters())
        with PeakRSS() as rss:
            started = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - started
    return {
        "variant": args.variant,
        "parameters": parameters,
        "rss_before_step_mib": rss.start / 2**20,
        "peak_rss_mib": rss.peak / 2**20,
        "step_peak_mib": (rss.peak - rss.start) / 2**20,
        "step_seconds": seconds,
        "mean_completion_length": trainer.state.log_history[0].get("completions/mean_length"),
    }


def moon3_config_ids(processor) -> dict[str, int]:
    tokenizer = processor.tokenizer
    return {"think_end": tokenizer.convert_tokens_to_ids("</think>"), "emb": tokenizer.convert_tokens_to_ids("<emb>")}


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.variant != "both":
        print(json.dumps(run_variant(args)))
        return 0
    results = {}
    passthrough = [arg for arg in (argv if argv is not None else sys.argv[1:])]
    for variant in ("trl", "moon3"):
        print(f"running the {variant} step in a subprocess ...", flush=True)
        command = [
            sys.executable,
            "-m",
            "benchmarks.peak_memory_grpo",
            *strip_flags(passthrough),
            "--variant",
            variant,
        ]
        completed = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        if completed.returncode != 0:
            raise SystemExit(f"the {variant} run failed:\n{completed.stderr[-3000:]}")
        results[variant] = json.loads(completed.stdout.strip().splitlines()[-1])
    ratio = results["moon3"]["step_peak_mib"] / results["trl"]["step_peak_mib"]
    print(
        f"\none GRPO step, vocabulary {args.vocab_size:,}, hidden {args.hidden_size}, {args.completions} completions x "
        f"{args.completion_length} tokens (resident memory, MiB)\n"
    )
    print("| trainer | parameters | before the step | peak | step peak | step s | mean completion length |")
    print("|---|---|---|---|---|---|---|")
    for name, label in (("trl", "TRL GRPOTrainer (backbone only)"), ("moon3", "Moon3GRPOTrainer")):
        r = results[name]
        print(
            f"| {label} | {r['parameters'] / 1e6:.1f}M | {r['rss_before_step_mib']:.0f} | {r['peak_rss_mib']:.0f} | "
            f"{r['step_peak_mib']:.0f} | {r['step_seconds']:.1f} | {r['mean_completion_length']} |"
        )
    verdict = "within" if ratio <= args.limit else "ABOVE"
    print(f"\nstep peak ratio MOON3 / TRL: {ratio:.2f} ({verdict} the {args.limit}x limit)")
    if args.out is not None:
        from benchmarks.io_utils import atomic_write_json

        atomic_write_json(
            args.out, {"settings": vars(args) | {"out": str(args.out)}, "results": results, "ratio": ratio}
        )
    return 0 if ratio <= args.limit else 1


def strip_flags(argv: list[str]) -> list[str]:
    """argv without `--variant X` and `--out X` (the parent handles those)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--variant", "--out"):
            skip = True
            continue
        if arg.startswith(("--variant=", "--out=")):
            continue
        kept.append(arg)
    return kept


if __name__ == "__main__":
    raise SystemExit(main())
