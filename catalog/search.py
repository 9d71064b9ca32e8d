"""Search an embedded catalogue by text, photo or both, with SQL filters and optional hybrid BM25 + vector fusion.

    python -m catalog.search --db runs/catalog/fashion --query "red running shoes"
    python -m catalog.search --db runs/catalog/fashion --image photo.jpg --filter "gender = 'Women'" -k 5
    python -m catalog.search --db runs/catalog/fashion --query "navy blue shirts by turtle for men" --hybrid

Vector search embeds the query with the catalogue's model (recorded in OUT/manifest.json; `--model` overrides) on
the query side, in direct mode, and ranks products by cosine similarity (exact below the ANN threshold, IVF_PQ with
exact re-scoring above it). `--hybrid` also runs LanceDB's BM25 full-text search over title + attributes +
description, takes the union of the top `--candidates` of each with both scores of every candidate, and fuses
them (catalog/fusion.py): by default a convex combination of min-max normalised cosine and BM25 (vector weight
chosen on the fashion val split), or `--fusion rrf` (weighted reciprocal rank fusion). `--bm25` is full-text search
alone. Filters apply before ranking (prefilter) on both sides.

The Python call is the same:
    >>> from catalog.search import CatalogSearch
    >>> searcher = CatalogSearch("runs/catalog/fashion")  # doctest: +SKIP
    >>> searcher.search(text="red running shoes", filter="gender = 'Women'", k=3)  # doctest: +SKIP
    [{'id': '...', 'title': '...', 'score': 0.61}, ...]
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

RESULT_FIELDS = ("id", "title", "image")
DEFAULT_FUSION = "convex"
DEFAULT_NORMALISATION = "minmax"
# (vector weight, BM25 weight) per fusion. convex: vector weight CHOSEN_VECTOR_WEIGHT, picked on the fashion val
# split (docs/catalog.md, "Measured on the fashion splits"); rrf: 1 and 1 as in the paper.
CHOSEN_VECTOR_WEIGHT = 0.1
DEFAULT_WEIGHTS = {"convex": (CHOSEN_VECTOR_WEIGHT, 1.0 - CHOSEN_VECTOR_WEIGHT), "rrf": (1.0, 1.0)}


@dataclass
class Candidates:
    """A hybrid query's candidate pool: hits by id, the two ranked id lists, and every hit's cosine and BM25."""

    hits: dict[str, dict]
    vector_ids: list[str]
    text_ids: list[str]
    cosine: dict[str, float]
    bm25: dict[str, float]


def fusion_weights(fusion: str, vector_weight: float | None = None, text_weight: float | None = None):
    """(vector weight, BM25 weight) of `fusion`, each None replaced by its default."""
    from .fusion import FUSIONS

    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {list(FUSIONS)}, got {fusion!r}.")
    default_vector, default_text = DEFAULT_WEIGHTS[fusion]
    return (default_vector if vector_weight is None else vector_weight,
            default_text if text_weight is None else text_weight)  # fmt: skip


def _id_filter(ids: list[str], filter: str | None) -> str:
    """SQL `id IN (...)` for `ids` (quotes escaped), ANDed with the user's filter."""
    quoted = ", ".join("'" + i.replace("'", "''") + "'" for i in ids)
    return f"id IN ({quoted})" + (f" AND ({filter})" if filter else "")


class CatalogSearch:
    """Searches one catalogue table (see the module docstring).

    Args:
        db: the embedding output folder (or its `lancedb` folder).
        model: checkpoint to embed queries with; default the one in the folder's manifest.
        embedder: an already built CatalogEmbedder (overrides `model`; tests share one).
        nprobes / refine_factor: ANN settings, used only when the table has a vector index.
    """

    def __init__(self, db, model: str | None = None, embedder=None, nprobes: int = 20, refine_factor: int = 10):
        from .store import db_dir, open_table

        self.db = Path(db)
        self.table = open_table(db)
        manifest = self._manifest(db_dir(db))
        self.model_path = model or manifest.get("model")
        self.truncate_dim = manifest.get("truncate_dim")
        self._embedder = embedder
        self.nprobes, self.refine_factor = nprobes, refine_factor
        self.columns = self.table.schema.names

    @staticmethod
    def _manifest(folder: Path) -> dict:
        manifest = folder.parent / "manifest.json"
        return json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}

    @property
    def embedder(self):
        if self._embedder is None:
            if self.model_path is None:
                raise ValueError("No model to embed the query with: pass --model (this table has no manifest).")
            from .embedder import CatalogEmbedder

            self._embedder = CatalogEmbedder(self.model_path, truncate_dim=self.truncate_dim)
        return self._embedder

    def query_vector(self, text: str | None = None, image=None):
        """The query's vector (E,): text, a photo (path or PIL image), or both."""
        from .embedder import load_rgb

        if image is not None and not hasattr(image, "convert"):
            if not Path(image).is_file():
                raise FileNotFoundError(f"--image {image} does not exist.")
            image = load_rgb(str(image))
        if text and image is not None:
            query = {"text": text, "image": image}
        elif text:
            query = text
        elif image is not None:
            query = image
        else:
            raise ValueError("Give a text query, a photo, or both (--query / --image).")
        return self.embedder.embed_queries([query])[0]

    def _run(self, builder, filter: str | None, k: int) -> list[dict]:
        if filter:
            builder = builder.where(filter, prefilter=True)
        try:
            return builder.limit(k).to_list()
        except Exception as e:  # LanceDB raises several types for a bad SQL filter
            if filter:
                attributes = [c for c in self.columns if c not in ("vector", "search_text", "record")]
                raise ValueError(f"The filter {filter!r} failed: {e}. Columns you can filter on: {attributes}.") from e
            raise

    def vector_search(self, vector, filter: str | None = None, k: int = 10) -> list[dict]:
        """Top k products by cosine similarity to `vector` (E,); `score` = cosine."""
        builder = self.table.search(vector, vector_column_name="vector").distance_type("cosine")
        builder = builder.nprobes(self.nprobes).refine_factor(self.refine_factor)
        return [self._result(row, 1.0 - row["_distance"]) for row in self._run(builder, filter, k)]

    def text_search(self, text: str, filter: str | None = None, k: int = 10) -> list[dict]:
        """Top k products by BM25 over `search_text`; `score` = BM25."""
        builder = self.table.search(text, query_type="fts", fts_columns="search_text")
        return [self._result(row, row["_score"]) for row in self._run(builder, filter, k)]

    def search(
        self,
        text: str | None = None,
        image=None,
        filter: str | None = None,
        k: int = 10,
        hybrid: bool = False,
        bm25: bool = False,
        candidates: int = 100,
        fusion: str = DEFAULT_FUSION,
        vector_weight: float | None = None,
        text_weight: float | None = None,
        normalisation: str = DEFAULT_NORMALISATION,
    ) -> list[dict]:
        """Top k products for a text and/or photo query: `[{"id", "title", "image", "score"}, ...]`, best first.

        `hybrid=True` fuses the vector ranking with BM25 over the text (`fusion`: "convex" or "rrf", see
        catalog/fusion.py; `score` = fused score; weights default to DEFAULT_WEIGHTS[fusion]); `bm25=True` uses
        BM25 alone. Both need `text`.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}.")
        if (hybrid or bm25) and not text:
            raise ValueError("--hybrid and --bm25 need a text query (--query); a photo alone has no words to match.")
        if bm25:
            return self.text_search(text, filter, k)
        vector = self.query_vector(text, image)
        if not hybrid:
            return self.vector_search(vector, filter, k)
        pool = self.hybrid_candidates(text, vector, filter, max(k, candidates))
        return self.fuse(pool, k, fusion, fusion_weights(fusion, vector_weight, text_weight), normalisation)

    def hybrid_candidates(self, text: str, vector, filter: str | None = None, candidates: int = 100) -> Candidates:
        """The union of the top `candidates` of vector search and of BM25, each product with both its scores.

        A BM25 hit outside the vector top list gets its exact cosine (an exact scan over those ids); a vector hit
        outside the BM25 top list gets its BM25 score (full-text search restricted to those ids), 0 when no query
        word occurs in it.
        """
        vector_hits = self.vector_search(vector, filter, candidates)
        text_hits = self.text_search(text, filter, candidates)
        cosine = {h["id"]: h["score"] for h in vector_hits}
        bm25 = {h["id"]: h["score"] for h in text_hits}
        hits = {h["id"]: h for h in text_hits + vector_hits}
        need_cosine = [i for i in bm25 if i not in cosine]
        if need_cosine:
            builder = self.table.search(vector, vector_column_name="vector").distance_type("cosine")
            builder = builder.bypass_vector_index().where(_id_filter(need_cosine, filter), prefilter=True)
            cosine.update({row["id"]: 1.0 - row["_distance"] for row in builder.limit(len(need_cosine)).to_list()})
        need_bm25 = [i for i in cosine if i not in bm25]
        if need_bm25:
            builder = self.table.search(text, query_type="fts", fts_columns="search_text")
            builder = builder.where(_id_filter(need_bm25, filter), prefilter=True).limit(len(need_bm25))
            found = {row["id"]: row["_score"] for row in builder.to_list()}
            bm25.update({i: found.get(i, 0.0) for i in need_bm25})
        return Candidates(hits, [h["id"] for h in vector_hits], [h["id"] for h in text_hits], cosine, bm25)

    @staticmethod
    def fuse(
        pool: Candidates,
        k: int,
        fusion: str = DEFAULT_FUSION,
        weights: tuple[float, float] | None = None,
        normalisation: str = DEFAULT_NORMALISATION,
    ) -> list[dict]:
        """Top k of a candidate pool by `fusion` with (vector, BM25) `weights`; `score` = fused score."""
        from .fusion import convex_fusion, reciprocal_rank_fusion

        weights = fusion_weights(fusion, *(weights or (None, None)))
        if fusion == "rrf":
            fused = reciprocal_rank_fusion([pool.vector_ids, pool.text_ids], weights)
        else:
            fused = convex_fusion([pool.cosine, pool.bm25], weights, normalisation)
        return [{**pool.hits[i], "score": score} for i, score in fused[:k]]

    @staticmethod
    def _result(row: dict, score: float) -> dict:
        return {**{f: row.get(f) for f in RESULT_FIELDS}, "score": float(score)}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m catalog.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, help="output folder of catalog.embed (or its lancedb folder)")
    parser.add_argument("--query", default=None, help="text query")
    parser.add_argument("--image", default=None, help="path of a query photo (with --query: both)")
    parser.add_argument("--filter", default=None, help="SQL filter on metadata, e.g. \"gender = 'Women'\"")
    parser.add_argument("-k", type=int, default=10, help="results to print")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--hybrid", action="store_true", help="fuse BM25 full-text and vector search (see --fusion)")
    mode.add_argument("--bm25", action="store_true", help="BM25 full-text search only (no model)")
    parser.add_argument("--candidates", type=int, default=100, help="hybrid: hits taken from each ranking")
    parser.add_argument(
        "--fusion",
        choices=("convex", "rrf"),
        default=DEFAULT_FUSION,
        help="hybrid: convex = weighted sum of normalised scores (default), rrf = reciprocal rank fusion",
    )
    parser.add_argument(
        "--normalisation", choices=("minmax", "zscore"), default=DEFAULT_NORMALISATION, help="hybrid convex: scaling"
    )
    parser.add_argument(
        "--vector-weight",
        type=float,
        default=None,
        help=f"hybrid: weight of the vector side (default convex {DEFAULT_WEIGHTS['convex'][0]:g}, rrf 1)",
    )
    parser.add_argument(
        "--text-weight",
        type=float,
        default=None,
        help=f"hybrid: weight of the BM25 side (default convex {DEFAULT_WEIGHTS['convex'][1]:g}, rrf 1)",
    )
    parser.add_argument("--model", default=None, help="checkpoint for query embedding (default: the manifest's)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON lines")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.query is None and args.image is None:
        parser.error("give --query TEXT, --image PATH, or both.")
    if (args.hybrid or args.bm25) and not args.query:
        parser.error("--hybrid and --bm25 need --query (a photo alone has no words to match).")
    searcher = CatalogSearch(args.db, model=args.model)
    hits = searcher.search(
        text=args.query,
        image=args.image,
        filter=args.filter,
        k=args.k,
        hybrid=args.hybrid,
        bm25=args.bm25,
        candidates=args.candidates,
        fusion=args.fusion,
        normalisation=args.normalisation,
        vector_weight=args.vector_weight,
        text_weight=args.text_weight,
    )
    for rank, hit in enumerate(hits, start=1):
        print(
            json.dumps(hit, ensure_ascii=False)
            if args.json
            else f"{rank:>3}  {hit['score']:.4f}  {hit['id']}  {hit['title']}"
        )
    return hits


if __name__ == "__main__":
    main()
