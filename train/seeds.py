"""Train one moon3-mini recipe with several seeds and evaluate every checkpoint in direct and reason mode (or query-reason).

    python -m train.seeds --out runs/seeds --seeds 0 1 2                    # train + evaluate (resumable)
    python -m train.seeds --out runs/seeds --seeds 0 --dry-run              # print the commands, run nothing
    python -m train.seeds --out runs/seeds --seeds 0 1 2 --skip-eval        # train only

For each seed: a random checkpoint (`python -m train.build_checkpoint --random`, the moon3-mini shape, one shared
tokenizer), stage 1 (`--stage1-config`), stage 2 (`--stage2-config`) from it; then `python -m benchmarks.run` on
the stage-1 and the stage-2 checkpoint, each in `--modes` (direct and reason by default), on `--data`. A step whose
output exists is skipped, so an interrupted run resumes; files are written atomically. The table gives, per
(stage, mode) row, the mean over the seeds of each task's primary metric and of the retrieval mean, with the
spread (max - min over the seeds) beside it, and goes to `<out>/table.md` and `<out>/table.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from train.ablate import (
    MINI_BUILD_ARGS,
    add_run_arguments,
    atomic_write_text,
    is_checkpoint,
    prepare_run,
    primary_metrics,
    record_time,
    run,
)

logger = logging.getLogger(__name__)

STAGES = ("stage1", "stage2")


def train_seed(seed: int, args) -> dict[str, Path]:
    """Build, stage 1 and stage 2 for one seed (skipping what exists); returns {stage: checkpoint}."""
    python, accelerate = sys.executable, str(Path(sys.executable).with_name("accelerate"))
    launch = [accelerate, "launch", "--config_file", "train/accelerate/cpu_1proc.yaml"]
    folder = args.out / f"s{seed}"
    init, stage1, stage2 = folder / "init", folder / "stage1", folder / "stage2"
    if not is_checkpoint(init):
        build = [python, "-m", "train.build_checkpoint", "--random", "--tokenizer", str(args.out / "tokenizer")]
        build += MINI_BUILD_ARGS + ["--seed", str(seed), "--out", str(init)]
        record_time(folder, "build_s", run(build, folder / "logs" / "build.log", args.dry_run))
    if not is_checkpoint(stage1):
        command = launch + ["-m", "train.cold_start", "--config", str(args.stage1_config)]
        command += ["--model_name_or_path", str(init), "--output_dir", str(stage1), "--seed", str(seed)]
        command += args.stage1_args
        record_time(folder, "stage1_s", run(command, folder / "logs" / "stage1.log", args.dry_run))
    if not is_checkpoint(stage2):
        command = launch + ["-m", "train.grpo_contrastive", "--config", str(args.stage2_config)]
        command += ["--model_name_or_path", str(stage1), "--output_dir", str(stage2), "--seed", str(seed)]
        command += args.stage2_args
        record_time(folder, "stage2_s", run(command, folder / "logs" / "stage2.log", args.dry_run))
    return {"stage1": stage1, "stage2": stage2}


def evaluate(checkpoint: Path, mode: str, folder: Path, args) -> Path:
    """`benchmarks.run` on one checkpoint in one mode; returns its results.json (skipped when it exists)."""
    results = folder / f"bench-{checkpoint.name}-{mode}" / "results.json"
    if not results.is_file():
        command = [sys.executable, "-m", "benchmarks.run", "--model", str(checkpoint), "--trust-remote-code"]
        command += ["--mode", mode, "--data", *map(str, args.data), "--out", str(results.parent), "--no-progress"]
        command += ["--tasks", *args.tasks] if args.tasks else []
        log = folder / "logs" / f"eval-{checkpoint.name}-{mode}.log"
        record_time(folder, f"eval_{checkpoint.name}_{mode}_s", run(command, log, args.dry_run))
    return results


def summarise(per_seed: dict[tuple[str, str], list[dict]]) -> dict:
    """{(stage, mode): [metrics per seed]} -> {"stage/mode": {"mean": {...}, "spread": {...}, "seeds": n}}; the
    retrieval mean (over the retrieval tasks, nDCG@10) is added as the task `retrieval mean`."""
    table = {}
    for (stage, mode), runs in per_seed.items():
        runs = [dict(metrics, **{"retrieval mean": retrieval_mean(metrics)}) for metrics in runs]
        tasks = [task for task in runs[0] if all(r.get(task) is not None for r in runs)]
        table[f"{stage}/{mode}"] = {
            "seeds": len(runs),
            "mean": {t: sum(r[t] for r in runs) / len(runs) for t in tasks},
            "spread": {t: max(r[t] for r in runs) - min(r[t] for r in runs) for t in tasks},
            "per_seed": runs,
        }
    return table


def retrieval_mean(metrics: dict[str, float | None]) -> float | None:
    values = [value for task, value in metrics.items() if "/retrieval/" in task and value is not None]
    return sum(values) / len(values) if values else None


def markdown(table: dict) -> str:
    """One row per stage/mode: `mean ± spread` per task (spread = max - min over the seeds)."""
    tasks = list(next(iter(table.values()))["mean"])
    short = [t.replace("fashion/", "").replace("retrieval/", "").replace("classification/", "cls/") for t in tasks]
    lines = ["| stage / mode | seeds | " + " | ".join(short) + " |", "|---|---:|" + "---:|" * len(tasks)]
    for name, row in table.items():
        cells = [f"{row['mean'][t]:.3f} ± {row['spread'][t]:.3f}" if t in row["mean"] else "n/a" for t in tasks]
        lines.append(f"| {name} | {row['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nmean ± spread over the seeds (spread = max - min); primary metric of each task.\n"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for every run and the table")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (initialisation, data order)")
    parser.add_argument(
        "--stage1-config", type=Path, default=Path("train/recipes/mini_cold_start.yaml"), help="stage-1 recipe"
    )
    parser.add_argument(
        "--stage2-config", type=Path, default=Path("train/recipes/mini_grpo.yaml"), help="stage-2 recipe"
    )
    parser.add_argument(
        "--stage1-args", type=shlex.split, default=[], help='extra stage-1 flags, e.g. "--max_steps 10"'
    )
    parser.add_argument("--stage2-args", type=shlex.split, default=[], help="extra stage-2 flags")
    parser.add_argument("--tasks", nargs="*", default=None, help="benchmarks.run --tasks (default: all tasks)")
    parser.add_argument(
        "--modes", nargs="+", default=["direct", "reason"], choices=["direct", "reason", "query-reason"]
    )
    add_run_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    prepare_run(args)
    per_seed: dict[tuple[str, str], list[dict]] = {}
    for seed in args.seeds:
        logger.info("== seed %d", seed)
        checkpoints = train_seed(seed, args)
        if args.skip_eval or args.dry_run:
            continue
        for stage in STAGES:
            for mode in args.modes:
                results = json.loads(evaluate(checkpoints[stage], mode, args.out / f"s{seed}", args).read_text())
                per_seed.setdefault((stage, mode), []).append(primary_metrics(results))
    if not per_seed:
        return {}
    table = summarise(per_seed)
    atomic_write_text(args.out / "table.json", json.dumps(table, indent=2) + "\n")
    atomic_write_text(args.out / "table.md", markdown(table))
    print(markdown(table))
    return table


if __name__ == "__main__":
    main()
