"""Evaluate the shipped moon3-mini checkpoint (the repo root) and compare it with its row in the README.

    python -m benchmarks.evaluate_shipped                  # direct mode: fashion test split + Abt-Buy
    python -m benchmarks.evaluate_shipped --mode reason    # reasoning mode (generates up to 40 tokens per item)
    python -m benchmarks.evaluate_shipped --write-reference  # after retraining: this run becomes the README row

Data: the fashion catalogue is read from ../shared/data/fashion-product-images when it is there, otherwise the same
catalogue is loaded from the Hub (ashraq/fashion-product-images-small; needs network) — the script says which. Abt-Buy
is read from ../shared/data/abt-buy and skipped, with a message, when it is absent. Both are converted with
benchmarks.convert_fashion / convert_abt_buy, then `benchmarks.run` evaluates the model; the printed table puts each
primary metric next to the README's value (`benchmarks/moon3_mini_reference.json`) and the difference.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from .io_utils import atomic_write_json

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).resolve().parent / "moon3_mini_reference.json"


def prepare_data(work: Path, force_hub: bool = False) -> tuple[list[Path], list[str]]:
    """Convert the fashion test split (local copy, else the Hub) and Abt-Buy (when present); returns (folders, notes)."""
    from . import convert_abt_buy, convert_fashion

    folders, notes = [], []
    local = convert_fashion.DEFAULT_SOURCE.resolve()
    if (local / "products.csv").is_file() and not force_hub:
        folders.append(convert_fashion.main(["--source", str(local), "--out", str(work / "fashion")]))
        notes.append(f"fashion: local copy {local}")
    else:
        reason = "--hub given" if force_hub else f"{local} not found"
        notes.append(f"fashion: Hub dataset {convert_fashion.HUB_ID} ({reason})")
        folders.append(convert_fashion.main(["--hub", "--out", str(work / "fashion-hub")]))
    abt = convert_abt_buy.DEFAULT_SOURCE.resolve()
    if (abt / "tableA.csv").is_file():
        folders.append(convert_abt_buy.main(["--source", str(abt), "--out", str(work / "abt-buy")]))
        notes.append(f"abt-buy: local copy {abt}")
    else:
        notes.append(f"abt-buy: skipped ({abt} not found; it has no Hub copy here)")
    return folders, notes


def comparison_table(results: dict, reference: dict) -> tuple[str, float]:
    """Markdown rows `task | this run | README | diff` over the primary metrics, and the largest |diff|."""
    lines = ["| task | this run | README | diff |", "|---|---:|---:|---:|"]
    largest = 0.0
    for name, info in results["tasks"].items():
        value = results["metrics"].get(f"{name}/{info['primary_metric']}")
        expected = reference.get(name)
        if value is None:
            continue
        diff = "" if expected is None else f"{value - expected:+.3f}"
        largest = max(largest, 0.0 if expected is None else abs(value - expected))
        shown = "" if expected is None else f"{expected:.3f}"
        lines.append(f"| {name} ({info['primary_metric']}) | {value:.3f} | {shown} | {diff} |")
    return "\n".join(lines), largest


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO_ROOT), help="checkpoint folder (default: the repo root)")
    parser.add_argument("--mode", default="direct", choices=["direct", "reason"], help="MOON3 embedding mode")
    parser.add_argument("--hub", action="store_true", help="load the fashion catalogue from the Hub even if local")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "runs/data", help="where converted data is written")
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default: runs/bench/moon3-mini-<mode>)"
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (default: benchmarks.run's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (tasks, batches)")
    parser.add_argument("--tolerance", type=float, default=0.02, help="largest |diff| that counts as reproduced")
    parser.add_argument(
        "--write-reference",
        action="store_true",
        help="store this run's metrics and data hashes as the reference for --mode (after the root weights change)",
    )
    return parser


def reference_entry(results: dict, mode: str) -> dict:
    """The reference record of one mode: the primary metric of every task (4 decimals) and the data hashes."""
    command = "python -m benchmarks.run --model . --trust-remote-code"
    command += " --mode reason" if mode == "reason" else ""
    metrics = {
        name: round(results["metrics"][f"{name}/{info['primary_metric']}"], 4)
        for name, info in results["tasks"].items()
        if results["metrics"].get(f"{name}/{info['primary_metric']}") is not None
    }
    return {
        "model": "moon3-mini (repo root)",
        "data_hashes": {d["name"]: d["hash"] for d in results["data"]},
        "command": command + " --data runs/data/fashion runs/data/abt-buy",
        "metrics": metrics,
    }


def write_reference(results: dict, mode: str, path: Path = REFERENCE) -> None:
    """Replace `mode`'s entry of the reference file (atomically), keeping the other mode's."""
    reference = json.loads(path.read_text()) if path.is_file() else {}
    reference[mode] = reference_entry(results, mode)
    atomic_write_json(path, reference)


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .run import main as run_benchmark

    folders, notes = prepare_data(args.work, force_hub=args.hub)
    for note in notes:
        logger.info("data used — %s", note)
    out = args.out or REPO_ROOT / f"runs/bench/moon3-mini-{args.mode}"
    command = ["--model", args.model, "--trust-remote-code", "--mode", args.mode, "--out", str(out)]
    command += ["--cache-dir", str(args.cache_dir)] if args.cache_dir else []
    command += ["--no-progress"] if args.no_progress else []
    results = run_benchmark(command + ["--data", *map(str, folders)])
    if args.write_reference:
        write_reference(results, args.mode)
        logger.info("wrote the %s-mode reference to %s", args.mode, REFERENCE)
    reference = json.loads(REFERENCE.read_text()).get(args.mode, {}) if REFERENCE.is_file() else {}
    table, largest = comparison_table(results, reference.get("metrics", {}))
    print("\nData used:\n" + "\n".join(f"- {note}" for note in notes))
    print(f"\nmoon3-mini ({args.mode} mode) against the README row:\n\n{table}\n")
    same_data = {d["name"]: d["hash"] for d in results["data"]} == reference.get("data_hashes")
    if not reference:
        print("No README reference for this mode.")
    elif largest <= args.tolerance:
        print(
            f"Reproduced: every primary metric within {args.tolerance} of the README (largest |diff| {largest:.3f})."
        )
    else:
        print(
            f"NOT reproduced: largest |diff| {largest:.3f} > {args.tolerance}"
            + ("" if same_data else " (the data differ from the README's: other source or version).")
        )
    return results


if __name__ == "__main__":
    main()
