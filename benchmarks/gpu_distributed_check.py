"""GPU check of the distributed paths: a few steps of each stage under DeepSpeed ZeRO-2 and ZeRO-3, tiny and mini
random models, through the same `accelerate launch` commands users run. Prepared for a GPU machine; NOT RUN on this
project's machines (no GPU). On the CPU it stops with a message saying so.

    python -m benchmarks.gpu_distributed_check                   # 2 processes if 2+ GPUs, else 1; all 8 runs
    python -m benchmarks.gpu_distributed_check --sizes tiny --stages 3 --steps 2 --out runs/gpu_check.json

Each run: `accelerate launch --config_file train/accelerate/zero{2,3}.yaml --num_processes P` on the tiny recipes of
`-m train.cold_start` (gradient caching on: `--embedding_chunk_size 4`) and `-m train.grpo_contrastive`, with
`--random_model tiny|mini`, bf16, `--max_steps`. It records the exit code, wall time, the final logged losses and the
last lines of stderr of each run, prints a table and writes the JSON (atomically) if `--out` is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)
STAGES = {
    "cold_start": ("train.cold_start", "train/recipes/tiny_cold_start.yaml", ["--embedding_chunk_size", "4"]),
    "grpo": ("train.grpo_contrastive", "train/recipes/tiny_grpo.yaml", []),
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "mini"], choices=["tiny", "mini"], help="random models")
    parser.add_argument("--stages", nargs="+", type=int, default=[2, 3], choices=[2, 3], help="ZeRO stages")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per run")
    parser.add_argument("--num-processes", type=int, default=0, help="processes per run (0 = 2 if 2+ GPUs, else 1)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per run before it counts as hung")
    parser.add_argument("--out", default=None, help="write the results JSON here (empty = print only)")
    return parser


def run_one(stage_name: str, zero: int, size: str, args, processes: int, workdir: Path) -> dict:
    script, recipe, extra = STAGES[stage_name]
    output_dir = workdir / f"{stage_name}-zero{zero}-{size}"
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", f"train/accelerate/zero{zero}.yaml", "--num_processes", str(processes),
        "-m", script, "--config", recipe,
        "--random_model", size, "--use_cpu", "false", "--bf16", "true", "--max_steps", str(args.steps),
        "--logging_steps", "1", "--save_strategy", "no", "--output_dir", str(output_dir), *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=args.timeout)
        returncode, stderr = result.returncode, result.stderr
    except subprocess.TimeoutExpired as expired:
        returncode, stderr = "timeout (hung?)", (expired.stderr or b"").decode(errors="replace")
    losses = [line for line in stderr.splitlines() + [] if "'loss'" in line or '"loss"' in line]
    return {
        "stage": stage_name,
        "zero": zero,
        "size": size,
        "processes": processes,
        "returncode": returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "last_log": losses[-1][:400] if losses else None,
        "stderr_tail": stderr[-1500:] if returncode != 0 else "",
    }


def main(argv: list[str] | None = None) -> list[dict]:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("No CUDA GPU here: this check needs one (accelerate runs DeepSpeed only on accelerators).")
    processes = args.num_processes or (2 if torch.cuda.device_count() >= 2 else 1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for size in args.sizes:
            for zero in args.stages:
                for stage_name in STAGES:
                    logger.info("run %d/%d: %s ZeRO-%d %s x%d", len(results) + 1,
                                len(args.sizes) * len(args.stages) * len(STAGES), stage_name, zero, size, processes)  # fmt: skip
                    results.append(run_one(stage_name, zero, size, args, processes, Path(workdir)))
                    logger.info("  -> %s in %.1f s", results[-1]["returncode"], results[-1]["seconds"])
    print(f"\nGPU: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, {processes} process(es) per run")
    print("| stage | ZeRO | model | exit | seconds | last log |\n|---|---|---|---|---|---|")
    for row in results:
        print(
            f"| {row['stage']} | {row['zero']} | {row['size']} | {row['returncode']} | {row['seconds']} | {row['last_log']} |"
        )
    if args.out:
        from benchmarks.io_utils import atomic_write_json

        atomic_write_json(args.out, results)
    else:
        print(json.dumps([r for r in results if r["returncode"] != 0], indent=1)[:5000])
    return results


if __name__ == "__main__":
    main()
