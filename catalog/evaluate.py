"""Measure catalogue search on a benchmark data folder, next to what benchmarks.run computes for the same model.

    python -m benchmarks.convert_fashion --out runs/data/fashion
    python -m catalog.evaluate --model . --data runs/data/fashion --out runs/catalog/fashion-eval

For each query set (default: text2product, image2product) the gallery is written as a catalogue in the query set's
gallery view (text2product: title + photo, image2product: title + attributes, as benchmarks/README.md defines them),
embedded with `catalog.embed`, and searched through `CatalogSearch` (the code behind `python -m catalog.search`):
vector search, BM25 (LanceDB full-text) and hybrid (RRF of the two). Queries are embedded in batches with the
searcher's own embedder, then each is searched on its own. nDCG@10 and recall@10 come from benchmarks.metrics, on
ranks taken from the top 10 (a positive outside the top 10 contributes nothing to either metric, so they are exact).

The reference column runs benchmarks' own RetrievalTask on the same data with the same model (through
sentence-transformers, as `python -m benchmarks.run --model M --trust-remote-code` does) and with its BM25 scorer.
Results go to OUT/results.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

K = 10
TEXT_VIEWS = {"title_image", "product_text", "product"}  # gallery views that are product records


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m catalog.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="MOON3 checkpoint (e.g. . for the root one)")
    parser.add_argument("--data", required=True, help="benchmark data folder (benchmarks.convert_fashion output)")
    parser.add_argument("--out", required=True, help="work and results folder")
    parser.add_argument(
        "--query-sets",
        nargs="+",
        default=["text2product", "image2product"],
        help="query sets whose gallery view is a product record (title_image / product_text)",
    )
    parser.add_argument("--candidates", type=int, default=100, help="hybrid: hits taken from each ranking")
    parser.add_argument(
        "--vector-weights",
        type=float,
        nargs="+",
        default=[1.0],
        help="hybrid: RRF weights of the vector ranking to report (BM25's is 1); the first is "
        "'hybrid', others 'hybrid w=...' (a sweep on the evaluated data, not a tuned setting)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="products / queries per forward pass")
    parser.add_argument("--cache-dir", default=None, help="benchmarks' embedding cache for the reference run")
    parser.add_argument("--no-reference", action="store_true", help="skip the benchmarks.run reference numbers")
    return parser


def ranks_from_hits(hit_ids: list[str], positives: list[str]) -> np.ndarray:
    """1-based ranks of the positives in `hit_ids` (the top K); those not there get ranks beyond K."""
    position = {pid: rank for rank, pid in enumerate(hit_ids, start=1)}
    missing = iter(range(len(hit_ids) + 1, len(hit_ids) + 1 + len(positives)))
    return np.sort([position[p] if p in position else next(missing) for p in positives])


def metrics(ranks: list[np.ndarray]) -> dict[str, float]:
    from benchmarks.metrics import ndcg_at_k, recall_at_k

    return {"ndcg@10": ndcg_at_k(ranks, K), "recall@10": recall_at_k(ranks, K)}


def write_view_catalogue(data, query_set: str, folder: Path) -> Path:
    """The query set's gallery, in its gallery view, as a catalogue JSONL (image paths absolute)."""
    from benchmarks.data_format import product_view
    from benchmarks.io_utils import atomic_write_jsonl

    spec = data.query_sets[query_set]
    if spec.gallery_view not in TEXT_VIEWS:
        raise ValueError(f"query set {query_set!r} has gallery view {spec.gallery_view!r}, not a product record.")
    rows = [product_view(p, spec.gallery_view, data.root) for p in data.gallery(spec.gallery_group)]
    return atomic_write_jsonl(folder / "products.jsonl", rows)


def query_inputs(data, query_set: str) -> tuple[list[str | None], list[str | None], list[list[str]]]:
    """(texts, photo paths, positive ids) of a query set."""
    texts, photos, positives = [], [], []
    for q in data.query_sets[query_set].queries:
        if q.get("product_id") is not None:
            raise ValueError(f"query set {query_set!r} queries by product; catalog.evaluate takes text/photo queries.")
        texts.append(q.get("text"))
        photos.append(data.resolve(q["image"]) if q.get("image") else None)
        positives.append(list(q["positives"]))
    return texts, photos, positives


def query_vectors(searcher, texts, photos, batch_size: int) -> np.ndarray:
    from tqdm.auto import tqdm

    from .embedder import load_rgb

    items = []
    for text, photo in zip(texts, photos):
        image = load_rgb(photo) if photo else None
        items.append({"text": text, "image": image} if text and image else (text or image))
    out = [
        searcher.embedder.embed_queries(items[s : s + batch_size])
        for s in tqdm(range(0, len(items), batch_size), desc="embedding queries")
    ]
    return np.concatenate(out)  # (Q, E)


def evaluate_catalog(args, data, query_set: str) -> dict[str, dict[str, float]]:
    """nDCG@10 / recall@10 of vector, BM25 and hybrid catalogue search for one query set."""
    from .embed import main as embed_main
    from .search import CatalogSearch

    work = Path(args.out) / query_set
    catalogue = write_view_catalogue(data, query_set, work / "catalogue")
    embed_main(["--model", args.model, "--input", str(catalogue), "--out", str(work / "catalog"),
                "--batch-size", str(args.batch_size)])  # fmt: skip
    searcher = CatalogSearch(work / "catalog")
    texts, photos, positives = query_inputs(data, query_set)
    vectors = query_vectors(searcher, texts, photos, args.batch_size)
    hybrid_names = ["hybrid"] + [f"hybrid w={w:g}" for w in args.vector_weights[1:]]
    ranks = {name: [] for name in ["vector", "bm25", *hybrid_names]}
    for text, vector, pos in zip(texts, vectors, positives):
        vector_hits = searcher.vector_search(vector, k=max(K, args.candidates))
        ranks["vector"].append(ranks_from_hits([h["id"] for h in vector_hits[:K]], pos))
        if text:
            text_hits = searcher.text_search(text, k=max(K, args.candidates))
            ranks["bm25"].append(ranks_from_hits([h["id"] for h in text_hits[:K]], pos))
            for name, weight in zip(hybrid_names, args.vector_weights):
                fused = searcher.fuse(vector_hits, text_hits, K, weights=(weight, 1.0))
                ranks[name].append(ranks_from_hits([h["id"] for h in fused], pos))
    return {method: metrics(r) for method, r in ranks.items() if r}


def reference(args, data, query_set: str) -> dict[str, dict[str, float]]:
    """benchmarks' RetrievalTask on the same query set: the model (vector search) and its BM25 scorer."""
    from benchmarks.cache import EmbeddingCache
    from benchmarks.encoders import BM25Scorer, load_model
    from benchmarks.tasks.retrieval import RetrievalTask

    cache = EmbeddingCache(args.cache_dir) if args.cache_dir else None
    task = RetrievalTask(data, query_set, cache=cache, show_progress=True)
    out = {}
    for label, model in (("benchmarks.run model", load_model(args.model, trust_remote_code=True,
                                                              batch_size=args.batch_size)),
                         ("benchmarks.run bm25", BM25Scorer())):  # fmt: skip
        if task.missing_modalities(model):
            continue
        result = task(model)
        out[label] = {m: result[f"{task.name}/{m}"] for m in ("ndcg@10", "recall@10")}
    return out


def main(argv: list[str] | None = None) -> dict:
    from benchmarks.data_format import load_bench_data
    from benchmarks.io_utils import atomic_write_json

    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = load_bench_data(args.data)
    results = {"model": args.model, "data": str(args.data), "data_hash": data.hash, "query_sets": {}}
    for query_set in args.query_sets:
        row = {} if args.no_reference else reference(args, data, query_set)
        row.update({f"catalog {m}": v for m, v in evaluate_catalog(args, data, query_set).items()})
        results["query_sets"][query_set] = row
    atomic_write_json(Path(args.out) / "results.json", results)
    print("| query set | method | nDCG@10 | recall@10 |\n|---|---|---:|---:|")
    for query_set, row in results["query_sets"].items():
        for method, values in row.items():
            print(f"| {query_set} | {method} | {values['ndcg@10']:.3f} | {values['recall@10']:.3f} |")
    return results


if __name__ == "__main__":
    main()
