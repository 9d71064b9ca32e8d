"""The Task base class: applicability (modalities), cached encoding and the n/a convention.

A task is built from a loaded data folder, then called with a model: ``task(model) -> {"<prefix>/<metric>": value}``.
When the model lacks a modality the task needs, every value is None (n/a), never 0.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..cache import EmbeddingCache
from ..data_format import BenchData
from ..encoders import Encoder, Scorer


class Task(ABC):
    """Base class. Subclasses set `family`, `primary_metric`, `greater_is_better`, `required_modalities`,
    `metric_names` and implement `evaluate(model) -> dict[str, float]` with un-prefixed metric names."""

    family: str = "task"
    primary_metric: str = ""
    greater_is_better: bool = True
    metric_names: tuple[str, ...] = ()

    def __init__(
        self,
        data: BenchData,
        short_name: str,
        cache: EmbeddingCache | None = None,
        show_progress: bool = False,
        max_block_elements: int = 1 << 24,
    ):
        self.data = data
        self.short_name = short_name
        self.name = f"{data.name}/{self.family}/{short_name}"
        self.cache = cache
        self.show_progress = show_progress
        self.max_block_elements = max_block_elements
        self.required_modalities: set[str] = {"text"}

    def missing_modalities(self, model: Encoder | Scorer) -> set[str]:
        """Modalities this task needs that `model` does not support (empty when applicable)."""
        return self.required_modalities - set(model.modalities)

    def __call__(self, model: Encoder | Scorer) -> dict[str, float | None]:
        if self.missing_modalities(model):
            return {f"{self.name}/{m}": None for m in self.metric_names}
        return {f"{self.name}/{m}": float(v) for m, v in self.evaluate(model).items()}

    @abstractmethod
    def evaluate(self, model: Encoder | Scorer) -> dict[str, float]: ...

    def encode(self, model: Encoder, items: list[dict], side: str) -> np.ndarray:
        """Encode `items` as queries or documents (`side`), through the embedding cache when there is one."""
        method = model.encode_queries if side == "query" else model.encode_documents

        def compute():
            return method(items, show_progress=self.show_progress)

        if self.cache is None:
            return compute()
        return self.cache.get_or_compute(model.cache_key, self.data.cache_hash, side, self.name, items, compute)
