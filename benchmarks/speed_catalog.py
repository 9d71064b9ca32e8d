"""Speed of catalogue search: embedding throughput per engine, LanceDB index build, query latency, ANN recall.

    python -m benchmarks.speed_catalog --model . --input runs/data/fashion/products.jsonl --products 96 \
        --sizes 10000 100000 1000000 --out runs/speed_catalog.json

Part 1 embeds the first `--products` products of `--input` with catalog.embed (direct mode, shards only) on each of
`--engines`: `local` (this process, torch's default threads), `localN` (this process, N torch threads, e.g. `local1`
to compare with one Ray worker) and `rayN` (Ray Data with N workers of one CPU each; the local Ray instance is
started before the clock, actor start-up and model loading are inside it), `--repeats` times each in turn, and reports
the median products/s with every run's seconds beside it. Part 2 writes `--sizes` synthetic unit vectors
(`--dim`, drawn around `--clusters` random centres so that neighbourhoods exist, as in real embeddings) into a
LanceDB table and times `--queries` single-query searches (k=10) without an index (exact scan), then builds each of
`--index-types` as catalog.store does (IVF_HNSW_SQ: one graph per 100k rows; IVF_PQ: sqrt(N) partitions, dim/8
sub-vectors) and times the same searches through it (nprobes 20, refine 10); recall@10 is the overlap of its top 10
with the exact top 10 (benchmarks.retrieval.chunked_topk). Times are
wall clock on whatever else the machine is running: compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed_catalog", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=".", help="MOON3 checkpoint for the embedding part")
    parser.add_argument("--input", default="runs/data/fashion/products.jsonl", help="catalogue to embed from")
    parser.add_argument("--products", type=int, default=96, help="products embedded per engine (0 = skip part 1)")
    parser.add_argument(
        "--engines",
        nargs="+",
        default=["local", "local1", "ray1", "ray2"],
        help="local (torch's threads), localN (N torch threads), rayN (N Ray workers)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per engine (the median is reported)")
    parser.add_argument("--batch-size", type=int, default=8, help="products per forward pass")
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=[10_000, 100_000, 1_000_000],
        help="synthetic table sizes for part 2 (none = skip)",
    )
    parser.add_argument("--dim", type=int, default=256, help="vector dimension (moon3-mini: 256)")
    parser.add_argument("--clusters", type=int, default=1000, help="centres the synthetic vectors are drawn around")
    parser.add_argument(
        "--index-types",
        nargs="+",
        default=["IVF_HNSW_SQ", "IVF_PQ"],
        help="approximate index types to measure (catalog.store.INDEX_TYPES)",
    )
    parser.add_argument("--queries", type=int, default=200, help="timed queries per size")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp folder, deleted)")
    parser.add_argument("--out", default=None, help="write the results JSON here (atomically)")
    return parser


def parse_engine(name: str) -> tuple[str, int | None]:
    """("local", threads or None) or ("ray", workers) from an --engines name such as local, local1 or ray2."""
    for kind in ("local", "ray"):
        rest = name[len(kind) :] if name.startswith(kind) else None
        if rest is not None and (rest == "" and kind == "local" or rest.isdigit() and int(rest) >= 1):
            return kind, int(rest) if rest else None
    raise ValueError(f"--engines: unknown engine {name!r}; use local, localN (N torch threads) or rayN (N workers).")


def embedding_throughput(args, work: Path) -> list[dict]:
    """Median products/s of catalog.embed for each engine on the same products, over --repeats runs."""
    from benchmarks.io_utils import atomic_write_jsonl
    from catalog.embed import embed_catalog
    from catalog.embed import make_parser as embed_parser
    from catalog.records import read_catalog

    engines = {name: parse_engine(name) for name in args.engines}
    products, _ = read_catalog(args.input)
    subset = [{k: p[k] for k in ("id", "title", "attributes", "images")} for p in products[: args.products]]
    source = atomic_write_jsonl(work / "subset.jsonl", subset)
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    for repeat in range(args.repeats):
        for name, (kind, count) in engines.items():  # engines interleaved, so a load change hits all of them
            if kind == "ray":
                extra = ["--engine", "ray", "--workers", str(count)]
            else:
                extra = ["--threads", str(count)] if count else []
            out = work / f"embed-{name}-{repeat}"
            embed_args = embed_parser().parse_args(
                ["--model", args.model, "--input", str(source), "--out", str(out), "--skip-index",
                 "--batch-size", str(args.batch_size), "--shard-size", str(args.batch_size * 4), "--no-progress",
                 *extra]
            )  # fmt: skip
            if kind == "ray":
                import ray

                ray.init(num_cpus=count, include_dashboard=False, log_to_driver=False)
            threads = torch_threads()
            start = time.perf_counter()
            try:
                embed_catalog(embed_args)
            finally:
                elapsed = time.perf_counter() - start
                if kind == "ray":
                    ray.shutdown()
                set_torch_threads(threads)  # --threads changed this process's setting
            shutil.rmtree(out, ignore_errors=True)
            seconds[name].append(elapsed)
            logger.info("%s run %d: %d products in %.1f s", name, repeat + 1, len(subset), elapsed)
    rows = []
    for name, runs in seconds.items():
        median = float(np.median(runs))
        rows.append({"engine": name, "products": len(subset), "seconds": median, "runs_s": runs,
                     "products_per_s": len(subset) / median})  # fmt: skip
    return rows


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def synthetic_vectors(n: int, dim: int, clusters: int, rng) -> np.ndarray:
    """(n, dim) float32 unit vectors around `clusters` random unit centres (noise 0.5 per unit-norm component)."""
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):  # chunks keep the temporary noise array small
        m = min(100_000, n - start)
        block = centres[rng.integers(0, clusters, m)] + rng.standard_normal((m, dim)).astype(np.float32) * (
            0.5 / dim**0.5
        )
        out[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000, q))


def time_queries(table, queries: np.ndarray, exact: np.ndarray, bypass_index: bool) -> dict[str, float]:
    """p50/p95 latency (ms) of single-query top-10 searches and their recall@10 against `exact` (Q, 10)."""
    latencies, recalls = [], []
    for query, truth in zip(queries, exact):
        builder = table.search(query, vector_column_name="vector").distance_type("cosine").limit(10)
        builder = builder.bypass_vector_index() if bypass_index else builder.nprobes(20).refine_factor(10)
        start = time.perf_counter()
        hits = builder.select(["id"]).to_list()
        latencies.append(time.perf_counter() - start)
        recalls.append(len({int(h["id"][1:]) for h in hits} & set(truth.tolist())) / 10)
    return {"p50_ms": percentile_ms(latencies, 50), "p95_ms": percentile_ms(latencies, 95),
            "recall@10": float(np.mean(recalls))}  # fmt: skip


def index_size(args, n: int, work: Path, rng) -> list[dict]:
    """For n synthetic vectors: exact-scan latency, then per index type its build time, latency and recall@10."""
    import pyarrow as pa

    from benchmarks.retrieval import chunked_topk
    from catalog.store import default_partitions, open_table, write_table

    vectors = synthetic_vectors(n, args.dim, args.clusters, rng)  # (N, E)
    queries = synthetic_vectors(args.queries, args.dim, args.clusters, rng)  # (Q, E)
    _, exact = chunked_topk(queries, vectors, k=10)  # (Q, 10)
    ids = pa.array([f"v{i}" for i in range(n)], pa.string())
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), args.dim)
    del vectors
    folder = work / f"db-{n}"
    write_table(folder, pa.table({"id": ids, "title": ids, "vector": column}), ann_min_rows=n + 1, fts=False)
    del ids, column
    table = open_table(folder)
    flat = time_queries(table, queries, exact, bypass_index=True)
    rows = [{"n": n, "dim": args.dim, "index": "none (exact scan)", "build_s": 0.0, **flat}]
    for index_type in args.index_types:
        options = {"num_partitions": default_partitions(index_type, n)}
        if index_type == "IVF_PQ":
            options["num_sub_vectors"] = args.dim // 8
        start = time.perf_counter()
        table.create_index(metric="cosine", index_type=index_type, replace=True, **options)
        build_s = time.perf_counter() - start
        row = {"n": n, "dim": args.dim, "index": index_type, **options, "build_s": build_s}
        rows.append({**row, **time_queries(table, queries, exact, bypass_index=False)})
        logger.info("n=%d: %s", n, rows[-1])
    shutil.rmtree(folder, ignore_errors=True)
    return rows


def print_tables(results: dict) -> None:
    if results["embedding"]:
        print("| engine | products | median seconds (runs) | products/s |\n|---|---:|---:|---:|")
        for r in results["embedding"]:
            runs = ", ".join(f"{s:.1f}" for s in r["runs_s"])
            print(f"| {r['engine']} | {r['products']} | {r['seconds']:.1f} ({runs}) | {r['products_per_s']:.2f} |")
    if results["index"]:
        print("\n| vectors | index | build (s) | query p50 / p95 (ms) | recall@10 vs exact |")
        print("|---:|---|---:|---:|---:|")
        for r in results["index"]:
            print(f"| {r['n']:,} | {r['index']} | {r['build_s']:.1f} | {r['p50_ms']:.1f} / {r['p95_ms']:.1f} | "
                  f"{r['recall@10']:.3f} |")  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {args.repeats}.")
    for name in args.engines:
        try:
            parse_engine(name)
        except ValueError as error:
            raise SystemExit(str(error)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="speed_catalog."))
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    results = {"command": vars(args), "embedding": [], "index": []}
    try:
        if args.products:
            results["embedding"] = embedding_throughput(args, work)
        for n in args.sizes:
            results["index"].extend(index_size(args, n, work, rng))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    if args.out:
        from benchmarks.io_utils import atomic_write_json

        atomic_write_json(args.out, results)
    print_tables(results)
    return results


if __name__ == "__main__":
    main()
