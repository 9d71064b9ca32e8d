"""Time and peak memory of chunked exact top-k retrieval over growing galleries of random unit vectors.

    python -m benchmarks.speed_retrieval --sizes 10000 50000 100000 200000 --queries 1000 --dim 256

Peak memory is the process's resident set (psutil RSS, sampled every 2 ms during the search) above what it held
before the search began (the gallery is already allocated then), so it measures the search's own working
memory. The last column shows what a full (Q, N) float32 score matrix would need instead.
"""

from __future__ import annotations

import argparse
import threading
import time


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000, 200_000], help="gallery sizes (vectors)"
    )
    parser.add_argument("--queries", type=int, default=1000, help="number of queries")
    parser.add_argument("--dim", type=int, default=256, help="embedding dimension")
    parser.add_argument("--k", type=int, default=10, help="results per query")
    parser.add_argument("--query-chunk", type=int, default=256, help="queries per block")
    parser.add_argument("--candidate-chunk", type=int, default=16384, help="candidates per block")
    parser.add_argument(
        "--backend",
        choices=("torch", "faiss", "both"),
        default="torch",
        help="faiss needs faiss-cpu; both = one row per backend",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random vectors")
    parser.add_argument("--out", default=None, help="optional JSON file for the rows (written atomically)")
    return parser


class PeakRSS:
    """Context manager sampling the RSS in a thread; `.peak_mb` is the peak above the RSS at entry."""

    def __init__(self, interval_s: float = 0.002):
        import psutil

        self.process, self.interval_s = psutil.Process(), interval_s

    def __enter__(self):
        self.start = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval_s)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        self.peak_mb = (self.peak - self.start) / 2**20


def unit_vectors(n: int, dim: int, seed: int):
    import numpy as np

    vectors = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)  # (n, E)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def main(argv: list[str] | None = None) -> list[dict]:
    args = make_parser().parse_args(argv)
    import torch

    from .retrieval import chunked_topk, faiss_available

    if args.threads:
        torch.set_num_threads(args.threads)
    backends = ["torch", "faiss"] if args.backend == "both" else [args.backend]
    if "faiss" in backends and not faiss_available():
        raise ImportError("--backend faiss needs faiss: pip install faiss-cpu (or use --backend torch)")
    queries = unit_vectors(args.queries, args.dim, args.seed)  # (Q, E)
    rows = []
    print(
        f"Q={args.queries} E={args.dim} k={args.k} query_chunk={args.query_chunk} "
        f"candidate_chunk={args.candidate_chunk} torch_threads={torch.get_num_threads()}"
    )
    print(
        "| backend | gallery N | time (s) | µs per query·1k candidates | peak extra RSS (MiB) | gallery (MiB) "
        "| full score matrix (MiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        gallery = unit_vectors(size, args.dim, args.seed + 1)  # (N, E)
        for backend in backends:
            chunked_topk(queries[:8], gallery[:1000], k=args.k, backend=backend)  # warm-up
            with PeakRSS() as memory:
                start = time.perf_counter()
                chunked_topk(
                    queries,
                    gallery,
                    k=args.k,
                    query_chunk=args.query_chunk,
                    candidate_chunk=args.candidate_chunk,
                    backend=backend,
                )
                seconds = time.perf_counter() - start
            row = {
                "backend": backend,
                "gallery": size,
                "queries": args.queries,
                "seconds": round(seconds, 3),
                "us_per_query_per_1k": round(seconds * 1e6 / args.queries / (size / 1000), 3),
                "peak_extra_rss_mib": round(memory.peak_mb, 1),
                "gallery_mib": round(gallery.nbytes / 2**20, 1),
                "full_matrix_mib": round(args.queries * size * 4 / 2**20, 1),
            }
            rows.append(row)
            print(
                f"| {backend} | {size:,} | {row['seconds']:.2f} | {row['us_per_query_per_1k']:.2f} | "
                f"{row['peak_extra_rss_mib']:.0f} | {row['gallery_mib']:.0f} | {row['full_matrix_mib']:.0f} |",
                flush=True,
            )
        del gallery
    if args.out:
        from .io_utils import atomic_write_json

        atomic_write_json(args.out, {"args": vars(args), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
