"""Retrieval tasks: one per query set of the data folder (text→image, image→product, same-product matching, ...).

Each query is ranked against the whole gallery (the products of the query set's gallery group, shown in its
gallery view). Ranks are exact and computed in bounded-memory blocks (benchmarks.retrieval).

Example:
    >>> from benchmarks.data_format import load_bench_data  # doctest: +SKIP
    >>> task = RetrievalTask(load_bench_data("runs/data/abt-buy"), "matching")  # doctest: +SKIP
    >>> task(RandomEncoder())["abt-buy/retrieval/matching/recall@1"]  # doctest: +SKIP
"""

from __future__ import annotations

from ..data_format import VIEW_MODALITIES, BenchData, product_view
from ..encoders import Scorer, item_modalities
from ..metrics import retrieval_metrics
from ..retrieval import chunked_positive_ranks, ranks_from_blocks
from .base import Task

CURVE_KS = (1, 5, 10, 20, 50, 100)


class RetrievalTask(Task):
    """Rank the gallery for each query; capped and standard Recall@K (K in CURVE_KS), MRR, nDCG@10, mAP."""

    family = "retrieval"
    primary_metric = "ndcg@10"
    metric_names = (
        tuple(f"recall@{k}" for k in CURVE_KS)
        + tuple(f"recall_uncapped@{k}" for k in CURVE_KS)
        + ("mrr", "ndcg@10", "map")
    )

    def __init__(self, data: BenchData, query_set: str, **kwargs):
        super().__init__(data, query_set, **kwargs)
        qs = data.query_sets[query_set]
        gallery = data.gallery(qs.gallery_group)
        position = {p["id"]: i for i, p in enumerate(gallery)}
        self.documents = [product_view(p, qs.gallery_view, data.root) for p in gallery]  # N items
        self.queries = [self._query_item(q, qs.query_view) for q in qs.queries]  # Q items
        self.positives = [[position[pid] for pid in q["positives"]] for q in qs.queries]
        self.required_modalities = set(VIEW_MODALITIES[qs.gallery_view])
        for item in self.queries:
            self.required_modalities |= {"text"} if "title" in item else item_modalities(item)

    def _query_item(self, query: dict, view: str | None) -> dict:
        if query.get("product_id") is not None:
            return product_view(self.data.products[self.data.index[query["product_id"]]], view, self.data.root)
        image = self.data.resolve(query["image"]) if query.get("image") else None
        return {"id": query["id"], "text": query.get("text"), "image": image}

    def evaluate(self, model):
        if isinstance(model, Scorer):
            ranks = ranks_from_blocks(model.score_blocks(self.queries, self.documents), self.positives)
        else:
            query_embeddings = self.encode(model, self.queries, "query")  # (Q, E)
            doc_embeddings = self.encode(model, self.documents, "document")  # (N, E)
            ranks = chunked_positive_ranks(
                query_embeddings, doc_embeddings, self.positives, self.max_block_elements, self.show_progress
            )
        return retrieval_metrics(ranks, ks=CURVE_KS)

    @classmethod
    def from_data(cls, data: BenchData, **kwargs) -> list[RetrievalTask]:
        return [cls(data, name, **kwargs) for name in data.query_sets]
