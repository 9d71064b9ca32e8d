"""Train and evaluate moon3-mini and its ablations with the repo's own commands; print one Markdown table.

    python -m train.ablate --out runs/ablation                       # every variant (resumable)
    python -m train.ablate --out runs/ablation --variants full-s0    # the shipped checkpoint only
    python -m train.ablate --out runs/ablation --dry-run             # print the commands, run nothing
    python -m train.ablate --out runs/ablation --mode reason         # the same rows, embedded after their reasoning

Every variant is trained by the same two documented commands (`accelerate launch -m train.cold_start --config
train/recipes/mini_cold_start.yaml`, then `-m train.grpo_contrastive --config train/recipes/mini_grpo_text.yaml`) from a
random checkpoint built by `python -m train.build_checkpoint --random`, with exactly one change:

| variant | change |
|---|---|
| `full-s0`, `full-s1` | none (seed 0 / 1: initialisation and data order); `full-s0` is the shipped checkpoint |
| `stage1-s0`, `stage1-s1` | stop after stage 1 (the stage-1 checkpoint of `full-s*`, evaluated as is) |
| `no-fusion` | checkpoint built with `--no-fusion` |
| `no-fire` | checkpoint built with `--no-fire` |
| `grpo-only` | stage 2 with `--contrastive_weight 0` (from `full-s0`'s stage 1) |

Each variant is then evaluated with `python -m benchmarks.run` (direct mode, or `--mode reason`) on the fashion test split and
Abt-Buy. A step whose output already exists is skipped, so an interrupted run resumes; every result file is written
atomically. The table (primary metric per task, and their mean) goes to `<out>/table.md` and `<out>/table.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("train.ablate")

REPO_ROOT = Path(__file__).resolve().parents[1]


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (temp file in the same folder, fsync, rename). `train` does not import
    `benchmarks` (whose io_utils does the same for the suite): the benchmarks run here as `python -m benchmarks.run`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# The shipped moon3-mini backbone (python -m train.build_checkpoint --random ...): about 1.5M parameters, 16 visual
# tokens per 224x224 photo (resized to 128x128), sized so that both stages take a few minutes on 2 CPU cores.
MINI_BUILD_ARGS = [
    "--hidden-size", "128", "--num-layers", "2", "--num-heads", "4",
    "--vision-hidden-size", "64", "--vision-depth", "1", "--max-pixels", str(128 * 128),
    "--embedding-dim", "256", "--matryoshka-dims", "64", "128", "256", "--max-reasoning-tokens", "40",
]  # fmt: skip
VOCAB_SIZE = 4000


@dataclass
class Variant:
    """One row of the table: how its checkpoint is built and trained."""

    name: str
    description: str
    seed: int = 0
    build_flags: list[str] = field(default_factory=list)
    stage2: bool = True
    stage2_flags: list[str] = field(default_factory=list)
    stage1_from: str | None = None  # reuse another variant's stage-1 checkpoint (same build, same seed)


VARIANTS = {
    v.name: v
    for v in [
        Variant("full-s0", "MOON3 (stage 1 + stage 2), seed 0 — shipped", seed=0),
        Variant("full-s1", "MOON3 (stage 1 + stage 2), seed 1", seed=1),
        Variant("stage1-s0", "stage 1 only, seed 0", seed=0, stage2=False, stage1_from="full-s0"),
        Variant("stage1-s1", "stage 1 only, seed 1", seed=1, stage2=False, stage1_from="full-s1"),
        Variant("no-fusion", "without modality fusion", build_flags=["--no-fusion"]),
        Variant("no-fire", "without FIRE", build_flags=["--no-fire"]),
        Variant(
            "grpo-only",
            "stage 2 without the contrastive term (GRPO only)",
            stage2_flags=["--contrastive_weight", "0"],
            stage1_from="full-s0",
        ),
    ]
}


def run(command: list[str], log_path: Path, dry_run: bool) -> float:
    """Run `command` from the repo root with its output in `log_path`; return the wall time in seconds."""
    logger.info("$ %s", shlex.join(command))
    if dry_run:
        return 0.0
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log_path.open("w") as log:
        process = subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"command failed (exit {process.returncode}); see {log_path}: {shlex.join(command)}")
    logger.info("done in %.0f s (log: %s)", seconds, log_path)
    return seconds


def record_time(folder: Path, step: str, seconds: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "timings.json"
    timings = json.loads(path.read_text()) if path.is_file() else {}
    timings[step] = round(seconds, 1)
    atomic_write_text(path, json.dumps(timings, indent=2) + "\n")


def ensure_tokenizer(out: Path, catalogue: Path, dry_run: bool) -> Path:
    """`<out>/tokenizer`, trained once on the catalogue's train split (`python -m train.build_tokenizer`), shared by
    every checkpoint built under `out`."""
    tokenizer = out / "tokenizer"
    if not (tokenizer / "tokenizer.json").is_file():
        command = [sys.executable, "-m", "train.build_tokenizer", "--data", str(catalogue)]
        command += ["--vocab-size", str(VOCAB_SIZE), "--out", str(tokenizer)]
        run(command, out / "tokenizer.log", dry_run)
    return tokenizer


def is_checkpoint(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() and (folder / "modules.json").is_file()


def train_variant(variant: Variant, args) -> Path:
    """Build, stage 1, stage 2 for one variant (skipping what exists); returns the checkpoint to evaluate."""
    python, accelerate = sys.executable, str(Path(sys.executable).with_name("accelerate"))
    launch = [accelerate, "launch", "--config_file", "train/accelerate/cpu_1proc.yaml"]
    folder = args.out / variant.name
    stage1 = args.out / variant.stage1_from / "stage1" if variant.stage1_from else folder / "stage1"
    if variant.stage1_from is None:
        init = folder / "init"
        if not is_checkpoint(init):
            build = [python, "-m", "train.build_checkpoint", "--random", "--tokenizer", str(args.out / "tokenizer")]
            build += MINI_BUILD_ARGS + ["--seed", str(variant.seed), "--out", str(init)] + variant.build_flags
            record_time(folder, "build_s", run(build, folder / "logs" / "build.log", args.dry_run))
        if not is_checkpoint(stage1):
            command = launch + ["-m", "train.cold_start", "--config", "train/recipes/mini_cold_start.yaml"]
            command += ["--model_name_or_path", str(init), "--output_dir", str(stage1), "--seed", str(variant.seed)]
            command += args.stage1_args
            record_time(folder, "stage1_s", run(command, folder / "logs" / "stage1.log", args.dry_run))
    elif not is_checkpoint(stage1) and not args.dry_run:
        raise RuntimeError(
            f"{variant.name} reuses {stage1}, which does not exist yet: run {variant.stage1_from} first."
        )
    if not variant.stage2:
        return stage1
    stage2 = folder / "stage2"
    if not is_checkpoint(stage2):
        command = launch + ["-m", "train.grpo_contrastive", "--config", "train/recipes/mini_grpo_text.yaml"]
        command += ["--model_name_or_path", str(stage1), "--output_dir", str(stage2), "--seed", str(variant.seed)]
        command += variant.stage2_flags + args.stage2_args
        record_time(folder, "stage2_s", run(command, folder / "logs" / "stage2.log", args.dry_run))
    return stage2


def evaluate(variant: Variant, checkpoint: Path, args) -> Path:
    folder = args.out / variant.name
    bench_name = args.bench_name or ("bench" if args.mode == "direct" else f"bench-{args.mode}")
    results = folder / bench_name / "results.json"
    if not results.is_file():
        command = [sys.executable, "-m", "benchmarks.run", "--model", str(checkpoint), "--trust-remote-code"]
        command += ["--mode", args.mode]
        command += ["--data", *map(str, args.data), "--out", str(results.parent), "--no-progress"]
        command += ["--tasks", *args.tasks] if args.tasks else []
        seconds = run(command, folder / "logs" / f"eval-{bench_name}.log", args.dry_run)
        record_time(folder, "eval_s" if bench_name == "bench" else f"eval_{bench_name}_s", seconds)
    return results


def primary_metrics(results: dict) -> dict[str, float | None]:
    """`{task: primary metric value}` of one results.json, in the order benchmarks.run wrote the tasks."""
    return {
        name: results["metrics"].get(f"{name}/{info['primary_metric']}") for name, info in results["tasks"].items()
    }


def markdown(rows: dict[str, dict]) -> str:
    """Rows = variants (or baselines), columns = tasks (short names), the mean over the tasks every row has, and the
    mean over the retrieval tasks among those (nDCG@10; steadier across seeds than the zero-shot label tasks)."""
    tasks = list(next(iter(rows.values()))["metrics"])
    shared = [t for t in tasks if all(row["metrics"].get(t) is not None for row in rows.values())]
    retrieval = [t for t in shared if "/retrieval/" in t]
    short = [t.replace("fashion/", "").replace("retrieval/", "").replace("classification/", "cls/") for t in tasks]
    header = "| model | " + " | ".join(short) + " | mean | retrieval mean |"
    lines = [header, "|---|" + "---:|" * (len(tasks) + 2)]
    for row in rows.values():
        values = [row["metrics"].get(t) for t in tasks]
        mean = sum(row["metrics"][t] for t in shared) / max(1, len(shared))
        retrieval_mean = sum(row["metrics"][t] for t in retrieval) / max(1, len(retrieval))
        cells = ["n/a" if v is None else f"{v:.3f}" for v in values]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + f" | {mean:.3f} | {retrieval_mean:.3f} |")
    note = (
        f"mean = over the {len(shared)} tasks every row can run; retrieval mean = over the {len(retrieval)} retrieval"
    )
    return "\n".join(lines) + f"\n\n{note} tasks among them (nDCG@10).\n"


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every train-and-evaluate driver shares (this one and `train.seeds`)."""
    parser.add_argument(
        "--data",
        nargs="+",
        type=Path,
        default=[Path("runs/data/fashion"), Path("runs/data/abt-buy")],
        help="benchmark data folders (python -m benchmarks.convert_fashion / convert_abt_buy)",
    )
    parser.add_argument(
        "--catalogue",
        type=Path,
        default=Path("../shared/data/fashion-product-images"),
        help="fashion catalogue the tokenizer is trained on (train split)",
    )
    parser.add_argument("--skip-eval", action="store_true", help="train only")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")


def prepare_run(args) -> None:
    """Logging, the output folder and the shared tokenizer, before any checkpoint is built."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    ensure_tokenizer(args.out, args.catalogue, args.dry_run)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"), help="folder for every run and the table")
    parser.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), help="rows to run (default: all)"
    )
    parser.add_argument(
        "--tasks", nargs="*", default=None, help="benchmarks.run --tasks for every variant (default: all tasks)"
    )
    parser.add_argument(
        "--baselines", nargs="*", default=[], help="results.json files of baselines to add as rows (e.g. bm25)"
    )
    parser.add_argument(
        "--bench-name",
        default=None,
        help="sub-folder of each variant for the results, one per data/task/mode choice (default: bench, bench-reason)",
    )
    parser.add_argument(
        "--mode",
        default="direct",
        choices=["direct", "reason", "query-reason"],
        help="MOON3 embedding mode for the evaluation",
    )
    parser.add_argument(
        "--stage1-args",
        type=shlex.split,
        default=[],
        help='extra stage-1 flags for every variant, e.g. "--max_steps 10"',
    )
    parser.add_argument("--stage2-args", type=shlex.split, default=[], help="extra stage-2 flags for every variant")
    add_run_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    prepare_run(args)
    rows = {}
    for name in args.variants:
        variant = VARIANTS[name]
        logger.info("== %s: %s", name, variant.description)
        checkpoint = train_variant(variant, args)
        if args.skip_eval or args.dry_run:
            continue
        results = json.loads(evaluate(variant, checkpoint, args).read_text())
        rows[name] = {"label": variant.description, "checkpoint": str(checkpoint), "metrics": primary_metrics(results)}
    table_name = "table" if args.mode == "direct" else f"table-{args.mode}"
    for path in map(Path, args.baselines):
        results = json.loads(path.read_text())
        rows[results["model"]["name"]] = {"label": results["model"]["name"], "metrics": primary_metrics(results)}
    if rows:
        table = markdown(rows)
        atomic_write_text(args.out / f"{table_name}.json", json.dumps(rows, indent=2) + "\n")
        atomic_write_text(args.out / f"{table_name}.md", table)
        print(table)
    return rows


if __name__ == "__main__":
    main()
