"""Measure catalogue search on a benchmark data folder, next to what benchmarks.run computes for the same model.

    python -m benchmarks.convert_fashion --out runs/data/fashion
    python -m catalog.evaluate --model . --data runs/data/fashion --out runs/catalog/fashion-eval

For each query set (default: text2product, image2product) the gallery is written as a catalogue in the query set's
gallery view (text2product: title + photo, image2product: title + attributes, as benchmarks/README.md defines them),
embedded with `catalog.embed`, and searched through `CatalogSearch` (the code behind `python -m catalog.search`):
vector search, BM25 (LanceDB full-text) and hybrid: the default of `catalog.search --hybrid`, then one row per
setting of the sweep options (`--convex-weights`, `--normalisations`, `--rrf-weights`, `--candidates`), and a line
naming the best hybrid row. Choose a setting on the val split (`benchmarks.convert_fashion --split val`), never on
test. Queries are embedded in batches with the searcher's own embedder, then each is searched on its own. nDCG@10 and recall@10 come from benchmarks.metrics, on
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
    parser.add_argument(
        "--candidates", type=int, nargs="+", default=[100], help="hybrid: hits taken from each ranking (a sweep)"
    )
    parser.add_argument(
        "--convex-weights",
        type=float,
        nargs="*",
        default=[],
        help="hybrid sweep: convex fusion with vector weight W and BM25 weight 1 - W, one row per W "
        "(choose on the val split, report on test)",
    )
    parser.add_argument(
        "--normalisations",
        nargs="+",
        choices=("minmax", "zscore"),
        default=["minmax"],
        help="hybrid sweep: score scaling of the --convex-weights rows",
    )
    parser.add_argument(
        "--rrf-weights",
        type=float,
        nargs="*",
        default=[1.0],
        help="hybrid sweep: RRF with vector weight W and BM25 weight 1, one row per W",
    )
    parser.add_argument(
        "--bm25-tie-orders",
        type=int,
        default=0,
        help="also report BM25 with its equal scores in N random orders (mean, sd): how much of a hybrid's gain "
        "over BM25 could come from its tie order alone",
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
    settings = hybrid_settings(args)
    ranks = {name: [] for name in ["vector", "bm25", *settings]}
    tie_rngs = [np.random.default_rng(seed) for seed in range(args.bm25_tie_orders)]
    tie_ranks = [[] for _ in tie_rngs]  # BM25's ranking with its ties in a random order, one list per seed
    for text, vector, pos in zip(texts, vectors, positives):
        vector_hits = searcher.vector_search(vector, k=K)
        ranks["vector"].append(ranks_from_hits([h["id"] for h in vector_hits], pos))
        if not text:
            continue
        ranks["bm25"].append(ranks_from_hits([h["id"] for h in searcher.text_search(text, k=K)], pos))
        pools = {c: searcher.hybrid_candidates(text, vector, candidates=max(K, c)) for c in args.candidates}
        for name, (candidates, fusion, weights, normalisation) in settings.items():
            fused = searcher.fuse(pools[candidates], K, fusion, weights, normalisation)
            ranks[name].append(ranks_from_hits([h["id"] for h in fused], pos))
        pool = pools[max(args.candidates)]
        for order, rng in zip(tie_ranks, tie_rngs):
            order.append(ranks_from_hits(shuffle_ties(pool.text_ids, pool.bm25, rng)[:K], pos))
    results = {method: metrics(r) for method, r in ranks.items() if r}
    if tie_ranks and tie_ranks[0]:
        ndcgs = np.array([metrics(r)["ndcg@10"] for r in tie_ranks])
        results["bm25 random tie orders"] = {
            "ndcg@10": float(ndcgs.mean()),
            "recall@10": float(np.mean([metrics(r)["recall@10"] for r in tie_ranks])),
            "ndcg@10_sd": float(ndcgs.std()),
            "ndcg@10_min": float(ndcgs.min()),
            "ndcg@10_max": float(ndcgs.max()),
            "orders": len(tie_ranks),
        }
    return results


def shuffle_ties(ids: list[str], scores: dict[str, float], rng) -> list[str]:
    """`ids` by descending score, equal scores in a random order drawn from `rng`."""
    keys = dict(zip(ids, rng.random(len(ids))))
    return sorted(ids, key=lambda i: (-scores[i], keys[i]))


def hybrid_settings(args) -> dict[str, tuple[int, str, tuple[float, float], str]]:
    """Row name -> (candidates, fusion, (vector weight, BM25 weight), normalisation) of each hybrid row: first the
    default of catalog.search --hybrid, then the sweep."""
    from .search import DEFAULT_FUSION, DEFAULT_NORMALISATION, DEFAULT_WEIGHTS

    default_candidates = 100 if 100 in args.candidates else args.candidates[0]
    vector_weight = DEFAULT_WEIGHTS[DEFAULT_FUSION][0]
    settings = {
        f"hybrid (default: {DEFAULT_FUSION} {DEFAULT_NORMALISATION} w={vector_weight:g} c={default_candidates})": (
            default_candidates, DEFAULT_FUSION, DEFAULT_WEIGHTS[DEFAULT_FUSION], DEFAULT_NORMALISATION)
    }  # fmt: skip
    for candidates in args.candidates:
        for normalisation in args.normalisations:
            for w in args.convex_weights:
                if not 0.0 <= w <= 1.0:
                    raise ValueError(f"--convex-weights must lie in [0, 1], got {w}.")
                name = f"hybrid convex {normalisation} w={w:g} c={candidates}"
                settings[name] = (candidates, "convex", (w, 1.0 - w), normalisation)
        for w in args.rrf_weights:
            settings[f"hybrid rrf w={w:g} c={candidates}"] = (candidates, "rrf", (w, 1.0), DEFAULT_NORMALISATION)
    return settings


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
    for query_set, row in results["query_sets"].items():
        hybrids = {m: v["ndcg@10"] for m, v in row.items() if m.startswith("catalog hybrid")}
        order = sorted(hybrids, key=lambda m: "(default" in m)  # the default row last: a tie goes to a sweep row
        if len(hybrids) > 1:
            best = max(order, key=hybrids.get)  # full precision; an exact tie goes to the earlier row
            print(f"best hybrid nDCG@10 on {query_set}: {best} ({hybrids[best]:.4f})")
        spread = row.get("catalog bm25 random tie orders")
        if spread:
            print(
                f"bm25 with ties in random order on {query_set} ({spread['orders']} orders): nDCG@10 mean "
                f"{spread['ndcg@10']:.4f}, sd {spread['ndcg@10_sd']:.4f}, min {spread['ndcg@10_min']:.4f}, "
                f"max {spread['ndcg@10_max']:.4f}"
            )
    return results


if __name__ == "__main__":
    main()
