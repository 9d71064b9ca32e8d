"""Read a product catalogue (JSONL or Parquet, one file or a folder of them) and sort its rows into good and bad.

A row is a product record in the project's format (benchmarks/README.md, "products.jsonl"): `id` and `title`
(non-empty strings), optional `attributes` (string -> string), `images` (paths relative to the file that lists
them, or absolute), `category` (list of strings), `description` and `group` (strings). `null` in an optional field
counts as absent (Parquet fills missing values with nulls). A bad row (unknown field, wrong type, missing or
unreadable image, duplicate id, broken JSON) never stops the run: it becomes a :class:`Reject` naming the file, the
1-based row, the id and the field, and the caller writes it to the rejects file.

Example:
    >>> products, rejects = read_catalog("runs/data/fashion/products.jsonl")  # doctest: +SKIP
    >>> products[0]["id"], len(rejects)  # doctest: +SKIP
    ('15970', 0)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

REQUIRED_FIELDS = ("id", "title")
OPTIONAL_FIELDS = ("attributes", "images", "category", "description", "group")
KNOWN_FIELDS = frozenset(REQUIRED_FIELDS + OPTIONAL_FIELDS)
SUFFIXES = (".jsonl", ".parquet")


@dataclass(frozen=True)
class Reject:
    """One bad row: where it is (`source` file, 1-based `row`), its `id` if readable, the `field` and why."""

    source: str
    row: int
    id: str | None
    field: str
    error: str

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.source}, row {self.row}, id {self.id!r}, field {self.field!r}: {self.error}"


class RowError(ValueError):
    """A row-level problem (raised inside validation, turned into a Reject)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def catalog_files(path: str | os.PathLike) -> list[Path]:
    """The .jsonl / .parquet files of `path` (the file itself, or a folder's files, recursively, sorted)."""
    path = Path(path)
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise ValueError(f"--input {path} is neither .jsonl nor .parquet. Convert it, or pass a folder of them.")
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"--input {path} does not exist. Pass a .jsonl/.parquet file or a folder of them.")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES and not p.name.startswith("."))
    if not files:
        raise ValueError(f"--input folder {path} holds no .jsonl or .parquet file.")
    return files


def _raw_rows(file: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """(1-based row, row dict or None, parse error or None) for each row of one file."""
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        for row_number, row in enumerate(pq.read_table(file).to_pylist(), start=1):
            yield row_number, row, None
        return
    with open(file, encoding="utf-8") as f:
        for row_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield row_number, None, f"not valid JSON ({e.msg} at column {e.colno})"
                continue
            yield row_number, row, None


def _string(row: dict, field: str) -> str:
    value = row[field]
    if not isinstance(value, str) or not value.strip():
        raise RowError(field, f"expected a non-empty string, got {value!r}")
    return value


def _string_list(row: dict, field: str) -> list[str]:
    value = row[field]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise RowError(field, f"expected a list of non-empty strings, got {value!r}")
    return list(value)


def _attributes(value) -> dict[str, str]:
    if isinstance(value, list) and all(isinstance(kv, (list, tuple)) and len(kv) == 2 for kv in value):
        value = dict(value)  # a Parquet map column reads back as (key, value) pairs
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if v is not None}  # a Parquet struct column pads missing keys
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise RowError("attributes", f"expected an object of string -> string, got {value!r}")
    return value


def _check_image(path: Path, index: int) -> None:
    from PIL import Image, UnidentifiedImageError

    field = f"images[{index}]"
    if not path.is_file():
        raise RowError(field, f"image file {path} does not exist (paths are relative to the catalogue file)")
    try:
        with Image.open(path):  # reads the header only
            pass
    except (UnidentifiedImageError, OSError) as e:
        raise RowError(field, f"image file {path} cannot be read as an image ({e})") from e


def validate_row(row, base: Path) -> dict:
    """The clean product of one raw row (image paths made absolute), or raise RowError naming the field."""
    if not isinstance(row, dict):
        raise RowError("row", f"expected a JSON object, got {type(row).__name__}")
    present = {k: v for k, v in row.items() if v is not None or k in REQUIRED_FIELDS}
    unknown = sorted(set(present) - KNOWN_FIELDS)
    if unknown:
        raise RowError(unknown[0], f"unknown field(s) {unknown}; known fields are {sorted(KNOWN_FIELDS)}")
    for field in REQUIRED_FIELDS:
        if field not in present:
            raise RowError(field, "missing required field")
    product = {"id": _string(present, "id"), "title": _string(present, "title")}
    product["attributes"] = _attributes(present["attributes"]) if "attributes" in present else {}
    images = _string_list(present, "images") if "images" in present else []
    resolved = [Path(p) if os.path.isabs(p) else (base / p) for p in images]
    for index, path in enumerate(resolved):
        _check_image(path, index)
    product["images"] = [str(p.resolve()) for p in resolved]
    product["category"] = _string_list(present, "category") if "category" in present else []
    for field in ("description", "group"):
        if field in present:
            if not isinstance(present[field], str):
                raise RowError(field, f"expected a string, got {present[field]!r}")
            product[field] = present[field]
    return product


def read_catalog(path: str | os.PathLike) -> tuple[list[dict], list[Reject]]:
    """All good products of `path` in file then row order, and a Reject for every bad row.

    Each product gains `source` (file path relative to `path`'s folder) and `row` (1-based), so vectors can be traced
    back to their line.
    """
    path = Path(path)
    root = path.parent if path.is_file() else path
    products: list[dict] = []
    rejects: list[Reject] = []
    seen: dict[str, tuple[str, int]] = {}
    for file in catalog_files(path):
        source = str(file.relative_to(root))
        for row_number, row, parse_error in _raw_rows(file):
            row_id = row.get("id") if isinstance(row, dict) and isinstance(row.get("id"), str) else None
            try:
                if parse_error is not None:
                    raise RowError("row", parse_error)
                product = validate_row(row, file.parent)
                if product["id"] in seen:
                    first = seen[product["id"]]
                    raise RowError("id", f"duplicate id, first seen in {first[0]} row {first[1]}")
            except RowError as e:
                rejects.append(Reject(source, row_number, row_id, e.field, str(e)))
                logger.warning("rejected %s", rejects[-1])
                continue
            seen[product["id"]] = (source, row_number)
            products.append({**product, "source": source, "row": row_number})
    return products, rejects
