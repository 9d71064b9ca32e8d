"""The embedding job's output folder: manifest, rejects file and vector shards, all written atomically.

Layout of `--out DIR`:

    DIR/manifest.json           what the job is (model + revision, mode, input fingerprint, shard size, counts)
    DIR/rejects.jsonl           one line per bad input row (source, row, id, field, error)
    DIR/shards/shard-00000.parquet   columns id, source, row, vector (E float32), reasoning, record (JSON)
    DIR/lancedb/                the searchable table, built from the shards once they are all there

Shard k holds products [k * shard_size, (k + 1) * shard_size) of the job, in input order. A shard file appears only
complete (temp file + fsync + rename), so after a kill a rerun of the same job embeds only the missing shards, and
because the plan depends only on the input, the finished folder is the same as an uninterrupted run's.

Example:
    >>> pending_shards(Path("runs/catalog/fashion"), num_products=993, shard_size=256)  # doctest: +SKIP
    [2, 3]
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np

from benchmarks.io_utils import atomic_write_bytes, atomic_write_json, atomic_write_jsonl

logger = logging.getLogger(__name__)

FORMAT = "moon3-catalog"
VERSION = 1
# manifest fields that define the job: a rerun with any of them changed would mix two jobs in one folder
JOB_FIELDS = ("model", "model_revision", "mode", "truncate_dim", "shard_size", "input_fingerprint", "embedding_dim")


def shard_path(out: Path, shard: int) -> Path:
    return out / "shards" / f"shard-{shard:05d}.parquet"


def shard_products(products: list[dict], shard: int, shard_size: int) -> list[dict]:
    """The products of shard `shard`: [shard * shard_size, (shard + 1) * shard_size)."""
    return products[shard * shard_size : (shard + 1) * shard_size]


def num_shards(num_products: int, shard_size: int) -> int:
    return (num_products + shard_size - 1) // shard_size


def pending_shards(out: Path, num_products: int, shard_size: int) -> list[int]:
    """Shards of the job whose file is not there yet, in order."""
    return [k for k in range(num_shards(num_products, shard_size)) if not shard_path(out, k).is_file()]


def remove_stale_temp_files(out: Path) -> int:
    """Delete temp files a killed run left in `out/shards` (never a finished shard); returns how many."""
    stale = list((out / "shards").glob(".*.tmp")) if (out / "shards").is_dir() else []
    for path in stale:
        path.unlink()
    return len(stale)


def check_or_write_manifest(out: Path, manifest: dict, overwrite: bool = False) -> None:
    """Write `manifest`, or check that the one already in `out` describes the same job (raise if not)."""
    path = out / "manifest.json"
    if path.is_file() and not overwrite:
        old = json.loads(path.read_text(encoding="utf-8"))
        changed = [f for f in JOB_FIELDS if old.get(f) != manifest.get(f)]
        if changed:
            field = changed[0]
            raise ValueError(
                f"--out {out} holds another embedding job: {field} was {old.get(field)!r}, now {manifest.get(field)!r}. "
                "A rerun resumes only the same job. Use a new --out, or pass --overwrite to start this one from scratch."
            )
        return
    if overwrite:
        for old_shard in (out / "shards").glob("shard-*.parquet") if (out / "shards").is_dir() else []:
            old_shard.unlink()
    atomic_write_json(path, manifest)


def write_rejects(out: Path, rejects) -> Path:
    return atomic_write_jsonl(out / "rejects.jsonl", [r.to_dict() for r in rejects])


def write_shard(out: Path, shard: int, products: list[dict], vectors: np.ndarray, reasoning: list) -> Path:
    """Write one shard atomically: products (B records), vectors (B, E) float32, reasoning (B,) str or None."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if len(products) != len(vectors) or len(products) != len(reasoning):
        raise ValueError(
            f"shard {shard}: {len(products)} products, {len(vectors)} vectors, {len(reasoning)} reasonings"
        )
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (B, E)
    table = pa.table(
        {
            "id": pa.array([p["id"] for p in products], pa.string()),
            "source": pa.array([p["source"] for p in products], pa.string()),
            "row": pa.array([p["row"] for p in products], pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
            "reasoning": pa.array(reasoning, pa.string()),
            "record": pa.array([json.dumps(p, ensure_ascii=False) for p in products], pa.string()),
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return atomic_write_bytes(shard_path(out, shard), buffer.getvalue())


def read_shards(out: Path):
    """All shards of `out` as one pyarrow Table, in shard order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((out / "shards").glob("shard-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{out}/shards holds no shard; run python -m catalog.embed --out {out} first.")
    return pa.concat_tables([pq.read_table(f) for f in files])
