"""On-disk embedding cache keyed by (model cache key, data hash, side, items hash); atomic writes.

The task is not part of the key: an embedding depends only on the model, the side and the items, so tasks that embed
the same items (the seven photo-based classification and attribute tasks embed the same 993 photos) share one entry.
What goes into the key: the encoder's `cache_key` (for sentence-transformers models: the Hub commit or the local
folder's file fingerprint, the mode, the processor settings, dtype and device; see `encoders.model_fingerprint`),
the data folder's hash including the sha256 of every image's bytes (`data_format.images_digest`), the side, and the
items themselves. Every reuse is logged at INFO level with the entry's path.

Example:
    >>> import numpy as np
    >>> cache = EmbeddingCache("/tmp/moon3-bench-doctest")
    >>> cache.get_or_compute("m@1", "d", "query", "t", [{"text": "a"}], lambda: np.ones((1, 2), np.float32)).shape
    (1, 2)
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .io_utils import atomic_write_bytes, sha256_json

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("~/.cache/moon3-bench").expanduser()


class EmbeddingCache:
    """Stores each embedding matrix as `<root>/<model slug>/<key>.npy`. A None model key bypasses the cache."""

    def __init__(self, root: str | Path = DEFAULT_CACHE_DIR):
        self.root = Path(root).expanduser()
        self.hits = 0
        self.misses = 0

    def path(self, model_key: str, data_hash: str, side: str, task: str, items: list[dict]) -> Path:
        key = sha256_json([model_key, data_hash, side, sha256_json(items)])
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_key)[:80]
        return self.root / slug / f"{key[:40]}.npy"

    def get_or_compute(
        self,
        model_key: str | None,
        data_hash: str,
        side: str,
        task: str,
        items: list[dict],
        compute: Callable[[], np.ndarray],
    ) -> np.ndarray:
        """Return the cached array for this key, or compute, store and return it."""
        if model_key is None:
            return compute()
        path = self.path(model_key, data_hash, side, task, items)
        if path.is_file():
            array = np.load(path)
            if array.shape[0] == len(items):
                self.hits += 1
                logger.info("cache: reusing %d %s embeddings for %s from %s", len(items), side, task, path)
                return array
            logger.warning("Ignoring cache file %s: %d rows for %d items", path, array.shape[0], len(items))
        self.misses += 1
        array = compute()
        buffer = io.BytesIO()
        np.save(buffer, array)
        atomic_write_bytes(path, buffer.getvalue())
        return array
