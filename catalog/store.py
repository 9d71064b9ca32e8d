"""The catalogue's searchable table in LanceDB (embedded, on local disk): vectors, ids, metadata, indexes.

One table, `products`, under `OUT/lancedb`, with columns
    id, title, vector (E float32, unit norm), reasoning, source, row, image (first photo), images, category,
    description, attributes (JSON), search_text (title + attributes + description, what full-text search reads)
and one string column per attribute key (`gender`, `baseColour`, ...; null where a product lacks it), so filters are
SQL such as `gender = 'Women' AND baseColour IN ('Red', 'Pink')`. A key that is not a plain identifier, or that
clashes with a column above, becomes `attr_<key>` with other characters replaced by `_`.

Indexes:
- vectors: exact (flat) cosine search below `ann_min_rows` rows (default 100,000); from there an approximate
  index, IVF_HNSW_SQ by default (one HNSW graph over 8-bit scalar-quantised vectors per ~100k rows), searched in
  `nprobes` partitions with the top `refine_factor * k` candidates re-scored exactly. IVF_PQ (sqrt(N) partitions,
  E/8 sub-vectors) is the smaller, lossier choice; benchmarks/speed_catalog.py measures both against exact search
  (IVF_PQ recalled 0.64 of the exact top 10 on its synthetic 10k set, IVF_HNSW_SQ 1.0);
- full text: LanceDB's native BM25 index on `search_text`, lower-cased words, no stemming or stop words (the same
  tokens as the BM25 baseline in benchmarks/encoders.py).

Example:
    >>> table = open_table("runs/catalog/fashion")  # doctest: +SKIP
    >>> table.count_rows()  # doctest: +SKIP
    993
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

TABLE = "products"
BASE_COLUMNS = (
    "id", "title", "vector", "reasoning", "source", "row", "image", "images", "category", "description",
    "attributes", "search_text",
)  # fmt: skip
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def db_dir(path: str | Path) -> Path:
    """The LanceDB folder of an embedding output folder (or the LanceDB folder itself)."""
    path = Path(path)
    return path / "lancedb" if (path / "manifest.json").is_file() else path


def attribute_column(key: str) -> str:
    """The column name of attribute `key`."""
    if _IDENTIFIER.match(key) and key not in BASE_COLUMNS and not key.startswith("_"):
        return key
    return "attr_" + re.sub(r"[^A-Za-z0-9_]", "_", key)


def products_arrow(shards):
    """The `products` table (pyarrow) from the shards' columns (id, source, row, vector, reasoning, record)."""
    import pyarrow as pa

    from benchmarks.encoders import flatten_product

    records = [json.loads(r) for r in shards.column("record").to_pylist()]
    columns = {
        "id": shards.column("id"),
        "title": pa.array([r["title"] for r in records], pa.string()),
        "vector": shards.column("vector"),
        "reasoning": shards.column("reasoning"),
        "source": shards.column("source"),
        "row": shards.column("row"),
        "image": pa.array([(r["images"] or [None])[0] for r in records], pa.string()),
        "images": pa.array([r["images"] for r in records], pa.list_(pa.string())),
        "category": pa.array([r["category"] for r in records], pa.list_(pa.string())),
        "description": pa.array([r.get("description") for r in records], pa.string()),
        "attributes": pa.array([json.dumps(r["attributes"], ensure_ascii=False) for r in records], pa.string()),
        "search_text": pa.array([flatten_product(r) for r in records], pa.string()),
    }
    keys = sorted({k for r in records for k in r["attributes"]})
    names = {k: attribute_column(k) for k in keys}
    clashes = sorted(n for n in set(names.values()) if list(names.values()).count(n) > 1)
    if clashes:
        raise ValueError(
            f"attribute keys {[k for k in keys if names[k] in clashes]} map to the same column; rename one."
        )
    for key in keys:
        columns[names[key]] = pa.array([r["attributes"].get(key) for r in records], pa.string())
    return pa.table(columns)


INDEX_TYPES = ("IVF_HNSW_SQ", "IVF_PQ", "IVF_SQ")


def default_partitions(index_type: str, rows: int) -> int:
    """IVF partitions: one HNSW graph per ~100k rows for IVF_HNSW_SQ, sqrt(N) lists for the flat IVF types."""
    if index_type == "IVF_HNSW_SQ":
        return max(1, rows // 100_000)
    return max(1, int(np.sqrt(rows)))


def write_table(
    db_path: str | Path,
    table,
    ann_min_rows: int = 100_000,
    fts: bool = True,
    index_type: str = "IVF_HNSW_SQ",
    num_partitions: int | None = None,
    num_sub_vectors: int | None = None,
) -> dict[str, float]:
    """Create (overwrite) the `products` table from a pyarrow table and build its indexes.

    Returns timings in seconds: `write_s`, `vector_index_s` (0 when below `ann_min_rows`: exact search), `fts_index_s`.
    """
    import lancedb

    if index_type not in INDEX_TYPES:
        raise ValueError(f"index_type must be one of {list(INDEX_TYPES)}, got {index_type!r}.")
    db = lancedb.connect(str(db_path))
    timings = {}
    start = time.perf_counter()
    lance_table = db.create_table(TABLE, data=table, mode="overwrite")
    timings["write_s"] = time.perf_counter() - start
    rows = table.num_rows
    dim = table.schema.field("vector").type.list_size
    timings["vector_index_s"] = 0.0
    if rows >= ann_min_rows:
        options = {"num_partitions": num_partitions or default_partitions(index_type, rows)}
        if index_type == "IVF_PQ":
            options["num_sub_vectors"] = num_sub_vectors or (dim // 8 if dim % 8 == 0 else dim)
        start = time.perf_counter()
        lance_table.create_index(metric="cosine", index_type=index_type, **options)
        timings["vector_index_s"] = time.perf_counter() - start
        logger.info("built %s index over %d vectors in %.1f s", index_type, rows, timings["vector_index_s"])
    timings["fts_index_s"] = 0.0
    if fts and "search_text" in table.column_names:
        start = time.perf_counter()
        lance_table.create_fts_index(
            "search_text", replace=True, stem=False, remove_stop_words=False, lower_case=True, ascii_folding=True
        )
        timings["fts_index_s"] = time.perf_counter() - start
    return timings


def build_table(out: str | Path, ann_min_rows: int = 100_000, index_type: str = "IVF_HNSW_SQ") -> dict[str, float]:
    """Load every shard of the job folder `out` into `out/lancedb` (replacing what was there)."""
    from .shards import read_shards

    out = Path(out)
    table = products_arrow(read_shards(out))
    timings = write_table(out / "lancedb", table, ann_min_rows=ann_min_rows, index_type=index_type)
    logger.info("wrote %d products to %s (%s)", table.num_rows, out / "lancedb", timings)
    return timings


def open_table(path: str | Path):
    """The `products` LanceDB table of an embedding output folder (or of a LanceDB folder)."""
    import lancedb

    folder = db_dir(path)
    db = lancedb.connect(str(folder))
    try:
        return db.open_table(TABLE)
    except (ValueError, FileNotFoundError) as e:
        raise FileNotFoundError(
            f"{folder} has no '{TABLE}' table. Build it with python -m catalog.embed --out DIR (without --skip-index)."
        ) from e
