"""Summarise the metrics a Trainer logged to its console output (the `{'loss': ..., ...}` lines).

    python -m train.log_summary runs/ablation/full-s0/logs/stage2.log
    python -m train.log_summary runs/ablation/full-s0/logs/stage1.log --keys retrieval/in_batch_accuracy sft/loss

For each metric it prints the first and last logged value and the means of the first and last quarter of the logged
steps (single GRPO steps see only a few queries, so the quarter means are the figures to quote).
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

_LOG_DICT = re.compile(r"\{'[^{}]*\}")
DEFAULT_KEYS = [
    "loss",
    "retrieval/in_batch_accuracy",
    "contrastive/loss",
    "sft/loss",
    "rewards/retrieval_rank_reward/mean",
    "rewards/format_reward/mean",
    "completions/reasoning_length",
]


def logged_steps(text: str) -> list[dict[str, float]]:
    """Every per-step log dict in `text` (the final `train_runtime` summary excluded), values as floats.

    >>> logged_steps("10%| {'loss': '0.5', 'epoch': '0.1'} {'train_runtime': '9.0'}")
    [{'loss': 0.5, 'epoch': 0.1}]
    """
    steps = []
    for match in _LOG_DICT.findall(text):
        try:
            entry = ast.literal_eval(match)
        except (SyntaxError, ValueError):
            continue
        if isinstance(entry, dict) and "loss" in entry:
            steps.append({key: float(value) for key, value in entry.items()})
    return steps


def summarise(steps: list[dict[str, float]], keys: list[str]) -> list[dict]:
    """One row per key present in the log: first, last, first-quarter mean, last-quarter mean, number of logs."""
    rows = []
    for key in keys:
        values = [step[key] for step in steps if key in step]
        if not values:
            continue
        quarter = max(1, len(values) // 4)
        rows.append(
            {
                "metric": key,
                "first": values[0],
                "last": values[-1],
                "first_quarter_mean": sum(values[:quarter]) / quarter,
                "last_quarter_mean": sum(values[-quarter:]) / quarter,
                "logs": len(values),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "log", type=Path, help="console output of a training run (train.ablate writes logs/stage*.log)"
    )
    parser.add_argument("--keys", nargs="+", default=DEFAULT_KEYS, help="metrics to summarise (those in the log)")
    args = parser.parse_args(argv)
    if not args.log.is_file():
        raise SystemExit(
            f"{args.log}: no such file (train.ablate writes <out>/<variant>/logs/stage1.log, stage2.log)."
        )
    steps = logged_steps(args.log.read_text(errors="replace"))
    if not steps:
        raise SystemExit(f"{args.log}: no logged training steps found (expected lines like {{'loss': ...}}).")
    rows = summarise(steps, args.keys)
    print("| metric | first | last | first quarter mean | last quarter mean | logs |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['metric']} | {row['first']:.3f} | {row['last']:.3f} | {row['first_quarter_mean']:.3f} "
            f"| {row['last_quarter_mean']:.3f} | {row['logs']} |"
        )
    return rows


if __name__ == "__main__":
    main()
