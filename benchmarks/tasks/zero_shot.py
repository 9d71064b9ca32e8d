"""Zero-shot classification (category levels) and attribute prediction from label prompts.

Every class is described by its label set's prompt templates (the manifest's, else benchmarks.prompts; embedded on
the query side as text); each row, a product shown in one view (its photo, or its title) or a query item of its own
(text, image or both: view `query`), is embedded on the document side; its class score is the mean
cosine over the class's prompts, and the prediction is the argmax (ties: the class listed first). Metrics:
accuracy and macro-F1 over the label set's classes.

Example:
    >>> tasks = ZeroShotTask.from_data(data)  # doctest: +SKIP
    >>> [t.name for t in tasks][:2]  # doctest: +SKIP
    ['fashion/classification/masterCategory/image', 'fashion/classification/masterCategory/title']
"""

from __future__ import annotations

import logging

import numpy as np

from ..data_format import LABEL_ITEM_VIEW, VIEW_MODALITIES, BenchData, product_view
from ..encoders import Scorer, item_modalities
from ..metrics import accuracy, macro_f1
from ..prompts import class_prompts, label_set_templates
from .base import Task

logger = logging.getLogger(__name__)


class ZeroShotTask(Task):
    """Predict one label set from one product view by nearest label prompt."""

    primary_metric = "accuracy"
    metric_names = ("accuracy", "macro_f1")

    def __init__(self, data: BenchData, label_set: str, view: str, **kwargs):
        self.label_set = data.label_sets[label_set]
        self.family = "classification" if self.label_set.kind == "category" else "attributes"
        super().__init__(data, f"{label_set}/{view}", **kwargs)
        self.view = view
        templates, source = label_set_templates(data.name, label_set, self.label_set.templates)
        logger.debug("%s: prompts from the %s", self.name, source)
        self.templates_source = source
        self.prompts = [class_prompts(templates, c) for c in self.label_set.classes]  # C lists of T
        self.items = [self._item(r, data) for r in self.label_set.rows]  # P items
        self.gold = [r["label"] for r in self.label_set.rows]
        if view == LABEL_ITEM_VIEW:
            self.required_modalities = {"text"}.union(*(item_modalities(item) for item in self.items))
        else:
            self.required_modalities = set(VIEW_MODALITIES[view]) | {"text"}

    def _item(self, row: dict, data: BenchData) -> dict:
        """A product row in this task's view, or a query row as it is (image path made absolute)."""
        if self.view != LABEL_ITEM_VIEW:
            return product_view(data.products[data.index[row["product_id"]]], self.view, data.root)
        return {"text": row.get("text"), "image": data.resolve(row["image"]) if row.get("image") else None}

    def class_scores(self, model) -> np.ndarray:
        """Mean prompt score of every item for every class, (P, C)."""
        flat = [{"text": p, "image": None} for prompts in self.prompts for p in prompts]  # C*T prompt items
        owner = np.repeat(np.arange(len(self.prompts)), [len(p) for p in self.prompts])  # (C*T,)
        if isinstance(model, Scorer):
            prompt_scores = np.concatenate([b for _, b in model.score_blocks(flat, self.items)]).T  # (P, C*T)
        else:
            prompt_embeddings = self.encode(model, flat, "query")  # (C*T, E)
            item_embeddings = self.encode(model, self.items, "document")  # (P, E)
            prompt_scores = item_embeddings @ prompt_embeddings.T  # (P, C*T)
        scores = np.zeros((len(self.items), len(self.prompts)))  # (P, C)
        np.add.at(scores.T, owner, prompt_scores.T)
        return scores / np.bincount(owner)[None, :]

    def evaluate(self, model):
        predicted = [self.label_set.classes[i] for i in np.argmax(self.class_scores(model), axis=1)]
        return {
            "accuracy": accuracy(self.gold, predicted),
            "macro_f1": macro_f1(self.gold, predicted, labels=self.label_set.classes),
        }

    @classmethod
    def from_data(cls, data: BenchData, kind: str, **kwargs) -> list[ZeroShotTask]:
        return [
            cls(data, name, view, **kwargs)
            for name, ls in data.label_sets.items()
            if ls.kind == kind
            for view in ls.views
        ]
