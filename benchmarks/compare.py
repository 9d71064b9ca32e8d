"""Print several results.json files side by side as a Markdown table.

    python -m benchmarks.compare runs/bench/random/results.json runs/bench/bm25/results.json \
        runs/bench/minilm/results.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="results.json files written by benchmarks.run")
    parser.add_argument(
        "--metrics",
        nargs="*",
        default=None,
        help="keep only metric keys ending in one of these (e.g. recall@1 ndcg@10); empty = primary",
    )
    parser.add_argument("--all", action="store_true", help="show every metric key")
    return parser


def compare_table(runs: list[dict], suffixes: list[str] | None = None, show_all: bool = False) -> str:
    """Markdown table: a row per metric key, a column per run; n/a = not applicable, - = not run."""
    keys: list[str] = []
    for run in runs:
        for task, info in run["tasks"].items():
            for key in run["metrics"]:
                if not key.startswith(task + "/") or key in keys:
                    continue
                metric = key[len(task) + 1 :]
                wanted = metric in suffixes if suffixes else metric == info["primary_metric"]
                if show_all or wanted:
                    keys.append(key)
    header = "| metric | " + " | ".join(r["model"]["name"] for r in runs) + " |"
    lines = [header, "|---|" + "---:|" * len(runs)]
    for key in keys:
        cells = []
        for run in runs:
            if key not in run["metrics"]:
                cells.append("-")
            else:
                value = run["metrics"][key]
                cells.append("n/a" if value is None else f"{value:.3f}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    args = make_parser().parse_args(argv)
    runs = []
    for path in args.results:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such results file; pass results.json files written by benchmarks.run")
        runs.append(json.loads(path.read_text(encoding="utf-8")))
    table = compare_table(runs, args.metrics, args.all)
    print(table)
    return table


if __name__ == "__main__":
    main()
