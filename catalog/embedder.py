"""The one class that touches the model: it loads MOON3 once and embeds batches of product records.

Both engines run it. The local engine calls it in a plain loop; the Ray engine hands the class to Ray Data's
`map_batches`, so each actor builds one instance (loads the model once) and then receives batches. A batch is a
dict of columns (Ray Data's "numpy" batch format): `record` holds each product as a JSON string (products have
different attribute keys, which Arrow could not put in one struct column), `position` its index in the job. The
result adds `vector` (B, E) float32 unit vectors and `reasoning` (B,) strings (None in direct mode).

Example:
    >>> embedder = CatalogEmbedder(".", mode="direct")  # doctest: +SKIP
    >>> out = embedder({"position": np.array([0]), "record": np.array(['{"id": "1", "title": "Red dress"}'])})
    >>> out["vector"].shape  # doctest: +SKIP
    (1, 256)
"""

from __future__ import annotations

import json
import logging

import numpy as np

logger = logging.getLogger(__name__)

MODES = ("direct", "reason")
MODEL_FIELDS = ("id", "title", "attributes", "images", "description")  # what Moon3Processor reads of a record


def load_moon3(model_path: str, device: str | None = None):
    """(model in eval mode, processor) of a MOON3 checkpoint folder or Hub id, with its remote code."""
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(model_path, trust_remote_code=True).eval()
    if device:
        model = model.to(device)
    processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=True)
    return model, processor


def load_rgb(path: str):
    """A PIL RGB image read fully from `path` (the file is closed afterwards), as the benchmarks load photos."""
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def model_input(product: dict) -> dict:
    """The record MOON3 embeds: the product's model fields with its photos loaded."""
    item = {k: product[k] for k in MODEL_FIELDS if k in product}
    item["images"] = [load_rgb(p) for p in product.get("images", [])]
    return item


class CatalogEmbedder:
    """Holds a MOON3 model and embeds product records (see the module docstring for the batch format).

    Args:
        model_path: checkpoint folder or Hub id.
        mode: "direct" (one forward) or "reason" (generate the reasoning, keep it beside the vector).
        batch_size: items per forward pass inside one call.
        truncate_dim: keep this many (Matryoshka) dimensions; None = all.
        device: torch device; None = CPU.
        torch_threads: torch intra-op threads in this process (each Ray actor gets its CPU share); None = torch's.
    """

    def __init__(
        self,
        model_path: str,
        mode: str = "direct",
        batch_size: int = 8,
        truncate_dim: int | None = None,
        device: str | None = None,
        torch_threads: int | None = None,
    ):
        import torch

        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}.")
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.mode, self.batch_size, self.truncate_dim = mode, batch_size, truncate_dim
        self.model, self.processor = load_moon3(model_path, device)

    @property
    def embedding_dim(self) -> int:
        return self.truncate_dim or self.model.config.embedding_dim

    def embed_products(self, products: list[dict]) -> tuple[np.ndarray, list[str | None]]:
        """(vectors (B, E) float32, reasoning strings or Nones) for product records."""
        import torch

        items = [model_input(p) for p in products]
        with torch.inference_mode():
            vectors, reasoning = self.model.encode(
                items,
                self.processor,
                kind="document",
                mode=self.mode,
                batch_size=self.batch_size,
                truncate_dim=self.truncate_dim,
                return_reasoning=True,
            )  # (B, E)
        if self.mode == "direct":
            reasoning = [None] * len(products)
        return vectors.numpy().astype(np.float32), reasoning

    def embed_queries(self, queries: list) -> np.ndarray:
        """Vectors (Q, E) for shopper queries: strings, PIL images or {"text", "image"} dicts (direct mode)."""
        import torch

        with torch.inference_mode():
            return self.model.encode(
                queries, self.processor, kind="query", mode="direct", truncate_dim=self.truncate_dim
            ).numpy()  # (Q, E)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        products = [json.loads(r) for r in batch["record"]]
        vectors, reasoning = self.embed_products(products)
        return {
            "position": np.asarray(batch["position"], dtype=np.int64),
            "record": np.asarray(batch["record"], dtype=object),
            "vector": vectors,
            "reasoning": np.asarray(reasoning, dtype=object),
        }
