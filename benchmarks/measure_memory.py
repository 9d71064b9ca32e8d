"""Peak memory of embedding many photos through the benchmark encoder: images are streamed by path, batch by batch.

    python -m benchmarks.measure_memory --model . --images ../shared/data/fashion-product-images/images --num-images 10000

Encodes `--num-images` photos (cycling through the folder's files when it holds fewer) as image queries, the way a
benchmark task hands them to `SentenceTransformerEncoder`, then prints the process's resident memory after the model
loaded and its peak (`ru_maxrss`) at the end. `--preload` opens every photo as a PIL image before encoding (what the
benchmark did before issue 15), for comparison. Run each setting in a fresh process: the peak is per process.
"""

from __future__ import annotations

import argparse
import logging
import resource
import time
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=".", help="MOON3 checkpoint folder or any sentence-transformers id/path")
    parser.add_argument("--images", type=Path, required=True, help="folder of photos (.jpg/.jpeg/.png/.webp)")
    parser.add_argument("--num-images", type=int, default=10_000, help="photos to encode (the folder is cycled)")
    parser.add_argument("--batch-size", type=int, default=32, help="encoding batch size (items)")
    parser.add_argument("--preload", action="store_true", help="open every photo as PIL first (the old behaviour)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """Resident memory now, MiB, from /proc/self/statm."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / (1 << 20)


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.num_images < 1:
        raise SystemExit(f"--num-images must be >= 1, got {args.num_images}.")
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"--images {args.images} holds no .jpg/.jpeg/.png/.webp file.")
    from .encoders import load_model, load_plain_image

    model = load_model(args.model, trust_remote_code=True, device="cpu", batch_size=args.batch_size)
    loaded = current_rss_mib()
    paths = [files[i % len(files)].resolve() for i in range(args.num_images)]
    items = [{"id": f"{i}:{path.name}", "text": None, "image": str(path)} for i, path in enumerate(paths)]
    if args.preload:
        items = [{"id": item["id"], "text": None, "image": load_plain_image(item["image"])} for item in items]
    started = time.perf_counter()
    embeddings = model.encode_queries(items, show_progress=not args.no_progress)
    seconds = time.perf_counter() - started
    result = {
        "photos": len(items),
        "distinct_files": min(len(files), len(items)),
        "batch_size": args.batch_size,
        "preload": args.preload,
        "rss_after_model_load_mib": round(loaded, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "encode_seconds": round(seconds, 1),
        "embeddings_shape": list(embeddings.shape),
    }
    for key, value in result.items():
        print(f"{key}: {value}")
    return result


if __name__ == "__main__":
    main()
