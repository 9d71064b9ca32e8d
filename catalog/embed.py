"""Embed a whole product catalogue with MOON3 into resumable shards, then build its search table.

    python -m catalog.embed --model . --input runs/data/fashion/products.jsonl --out runs/catalog/fashion
    python -m catalog.embed --model . --input catalogue/ --out runs/catalog/big --mode reason
    python -m catalog.embed --model . --input catalogue/ --out runs/catalog/big --engine ray --workers 2

The input (a .jsonl / .parquet file, or a folder of them) is read and checked first: bad rows go to
`OUT/rejects.jsonl` with their file, row, id and field, and are counted in the log and the manifest. The good
products are embedded shard by shard (`--shard-size` products each, written atomically); killing the job and running
the same command again embeds only the missing shards and gives the same folder. `--engine ray` runs the same
embedding class on Ray Data actors (catalog/ray_engine.py). Finally the shards are loaded into a LanceDB table under
`OUT/lancedb` (catalog/store.py), which `python -m catalog.search --db OUT` queries.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m catalog.embed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="MOON3 checkpoint folder or Hub id (e.g. . for the root one)")
    parser.add_argument("--input", required=True, help="products: a .jsonl/.parquet file or a folder of them")
    parser.add_argument("--out", required=True, help="output folder (manifest, rejects, shards, lancedb)")
    parser.add_argument(
        "--mode",
        choices=("direct", "reason"),
        default="direct",
        help="direct: one forward per product; reason: generate reasoning first and store it",
    )
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process; ray: Ray Data actors (needs pip install 'ray[data]')",
    )
    parser.add_argument("--shard-size", type=int, default=1024, help="products per shard file (the resume unit)")
    parser.add_argument("--batch-size", type=int, default=8, help="products per forward pass")
    parser.add_argument("--truncate-dim", type=int, default=None, help="keep this many dims (Matryoshka); default all")
    parser.add_argument("--device", default=None, help="torch device for the local engine (default CPU)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="local engine: torch intra-op threads (default: torch's choice, all cores); Ray sets one per CPU share",
    )
    # Ray engine
    parser.add_argument("--workers", type=int, default=2, help="Ray: number of model-holding actors")
    parser.add_argument("--cpus-per-worker", type=float, default=1, help="Ray: CPUs reserved per actor")
    parser.add_argument("--gpus-per-worker", type=float, default=0, help="Ray: GPUs per actor (0 = CPU only)")
    parser.add_argument(
        "--ray-address",
        default=None,
        help="Ray: cluster address (e.g. auto); empty = start a local instance sized to the workers",
    )
    # index
    parser.add_argument(
        "--ann-min-rows",
        type=int,
        default=100_000,
        help="build an approximate (IVF) index from this many products; fewer = exact search",
    )
    parser.add_argument(
        "--index-type",
        choices=("IVF_HNSW_SQ", "IVF_PQ", "IVF_SQ"),
        default="IVF_HNSW_SQ",
        help="approximate index built from --ann-min-rows products",
    )
    parser.add_argument("--skip-index", action="store_true", help="write shards only, no LanceDB table")
    parser.add_argument("--overwrite", action="store_true", help="discard an existing job in --out and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def model_revision(model_path: str) -> str:
    """A sha256 over the checkpoint's weight files (local folder), else the id itself."""
    import hashlib

    from benchmarks.io_utils import sha256_file

    path = Path(model_path)
    if not path.is_dir():
        return str(model_path)
    digest = hashlib.sha256()
    for weights in sorted(path.glob("*.safetensors")):
        digest.update(sha256_file(weights).encode())
    return "sha256:" + digest.hexdigest()[:16]


def job_manifest(args, products: list[dict], num_rejects: int, embedding_dim: int) -> dict:
    from benchmarks.io_utils import sha256_json

    from .shards import FORMAT, VERSION, num_shards

    model = str(Path(args.model).resolve()) if Path(args.model).is_dir() else args.model
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": model,
        "model_revision": model_revision(args.model),
        "mode": args.mode,
        "truncate_dim": args.truncate_dim,
        "embedding_dim": embedding_dim,
        "shard_size": args.shard_size,
        "input": str(Path(args.input).resolve()),
        "input_fingerprint": sha256_json(products),
        "num_products": len(products),
        "num_rejects": num_rejects,
        "num_shards": num_shards(len(products), args.shard_size),
    }


def run_local(embedder, products: list[dict], pending: list[int], out: Path, shard_size: int, progress: bool) -> None:
    """Embed the pending shards in this process, one micro-batch at a time, writing each shard when complete."""
    from tqdm.auto import tqdm

    from .shards import shard_products, write_shard

    total = sum(len(shard_products(products, k, shard_size)) for k in pending)
    with tqdm(total=total, desc="embedding products", unit="product", disable=not progress) as bar:
        for shard in pending:
            rows = shard_products(products, shard, shard_size)
            vectors, reasoning = [], []
            for start in range(0, len(rows), embedder.batch_size):
                batch = rows[start : start + embedder.batch_size]
                v, r = embedder.embed_products(batch)  # (b, E)
                vectors.append(v)
                reasoning.extend(r)
                bar.update(len(batch))
            write_shard(out, shard, rows, np.concatenate(vectors), reasoning)


def embed_catalog(args) -> dict:
    """Run the whole job described by parsed `args`; returns the manifest."""
    from .embedder import CatalogEmbedder
    from .records import read_catalog
    from .shards import check_or_write_manifest, pending_shards, remove_stale_temp_files, write_rejects

    if args.shard_size < 1 or args.batch_size < 1:
        raise ValueError(f"--shard-size and --batch-size must be >= 1, got {args.shard_size}, {args.batch_size}.")
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}; leave it out to let torch choose.")
    out = Path(args.out)
    products, rejects = read_catalog(args.input)
    logger.info("read %d products, rejected %d rows (see %s)", len(products), len(rejects), out / "rejects.jsonl")
    if not products:
        raise ValueError(f"--input {args.input} has no valid product ({len(rejects)} rejected); see the log above.")
    embedder = None
    if args.engine == "local":
        embedder = CatalogEmbedder(
            args.model, args.mode, args.batch_size, args.truncate_dim, args.device, torch_threads=threads
        )
        dim = embedder.embedding_dim
    else:
        dim = args.truncate_dim or json.loads((Path(args.model) / "config.json").read_text())["embedding_dim"]
    manifest = job_manifest(args, products, len(rejects), dim)
    out.mkdir(parents=True, exist_ok=True)
    check_or_write_manifest(out, manifest, overwrite=args.overwrite)
    write_rejects(out, rejects)
    if removed := remove_stale_temp_files(out):
        logger.info("removed %d temp file(s) of an interrupted run", removed)
    pending = pending_shards(out, len(products), args.shard_size)
    logger.info("%d of %d shards to embed", len(pending), manifest["num_shards"])
    if pending and args.engine == "local":
        run_local(embedder, products, pending, out, args.shard_size, not args.no_progress)
    elif pending:
        from .ray_engine import run_ray

        run_ray(args, products, pending, out)
    if not args.skip_index:
        from .store import build_table

        build_table(out, ann_min_rows=args.ann_min_rows, index_type=args.index_type)
    return manifest


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    manifest = embed_catalog(args)
    print(
        f"embedded {manifest['num_products']} products into {manifest['num_shards']} shards in {args.out} "
        f"({manifest['num_rejects']} rejected rows in {Path(args.out) / 'rejects.jsonl'})"
    )
    return manifest


if __name__ == "__main__":
    main()
