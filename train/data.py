"""MOON3 training data: the row format, loading and validation with `datasets`, and builders from ../shared/data.

Format (one JSON object per line in `.jsonl`, or one row per record in `.parquet`):

    {"query":     {"text": "women blue casual tops"}            # or {"image": "path.jpg"}, or both, or a plain string
     "positive":  {"id": "1234", "title": "...", "attributes": {"gender": "Women", ...},
                   "description": "...", "images": ["path.jpg"]}  # the product the query should retrieve
     "negatives": [{...product...}, ...]                          # optional hard negatives
     "reasoning": "audience: Women; colour: Blue; usage: Casual.",  # optional reasoning target for the query
     "positive_reasoning": "audience: Women; type: Tops; ..."}       # optional reasoning target for the positive

Products take the keys `Moon3Processor` reads (`id`, `title`, `attributes`, `description`, `images`/`image`); queries
the keys `text` and `image`/`images`. Image paths are absolute or relative to the working directory (the builders write
absolute paths). `null` values and absent keys mean the same thing. Attribute keys are free: each product has its own
(fashion and Abt-Buy rows mix in one file or across files); values are strings, finite numbers, booleans or lists of
those. Loaded rows share one Arrow schema (`row_features`): `attributes` is kept as JSON text in its own key order and
decoded by `clean_item`.

Validation (`python -m train.data validate`, and both training stages before their first step) checks each row's
schema, then builds every query and product with the processor as a training step will (keys, types, images opened and
decoded). Errors name the file, its row (0-based) and line, and the field; `--skip-bad-rows` (`--skip_bad_rows` in
training) leaves bad rows out, counts them and lists them in a rejects file (JSON Lines: file, row, line, error, raw).

Command line:

    python -m train.data build-fashion --data ../shared/data/fashion-product-images --split train --out fashion.jsonl
    python -m train.data build-abt-buy --data ../shared/data/abt-buy --out abt_buy.jsonl
    python -m train.data synthetic --num-rows 64 --out tiny.jsonl
    python -m train.data validate fashion.jsonl abt_buy.jsonl            # shipped processor; --schema-only skips it
    python -m train.data validate rows.jsonl --skip-bad-rows --rejects rejects.jsonl
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from train.build_tokenizer import MOON3_TOKENS
from train.fashion import REASONING_LAYOUTS, fashion_reasoning, fashion_reasoning_target

logger = logging.getLogger(__name__)

FASHION_ATTRIBUTES = ("gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage")
# Attributes an attribute-style query names, in the order a shopper would type them ("women blue casual tops").
QUERY_ATTRIBUTES = ("gender", "baseColour", "usage", "articleType")
ROW_KEYS = frozenset({"query", "positive", "negatives", "reasoning", "positive_reasoning"})


# --------------------------------------------------------------------------- loading and validation

PRODUCT_KEYS = frozenset({"id", "title", "attributes", "description", "images", "image"})  # as Moon3Processor reads
QUERY_KEYS = frozenset({"text", "image", "images"})
# One Arrow schema for every row, whatever its products' attribute keys: `attributes` is stored as a JSON object string
# (key order kept; `clean_item` decodes it), images always as `images` lists, ids as strings.
_PRODUCT_FEATURE = {
    "id": "string",
    "title": "string",
    "attributes": "string",
    "description": "string",
    "images": ["string"],
}


def row_features():
    """The `datasets.Features` every loaded training row has (see `_PRODUCT_FEATURE`)."""
    from datasets import Features, List, Value

    product = {key: List(Value("string")) if key == "images" else Value("string") for key in _PRODUCT_FEATURE}
    return Features(
        {
            "query": {"text": Value("string"), "images": List(Value("string"))},
            "positive": product,
            "negatives": List(product),
            "reasoning": Value("string"),
            "positive_reasoning": Value("string"),
        }
    )


@dataclass
class RowRecord:
    """One validated training row (in the stored form of `row_features`) and where it came from."""

    where: str  # e.g. "a.jsonl row 3 (line 4)"
    row: dict


@dataclass
class RowReject:
    """A row that failed validation: its place, the error and the row as read (JSON text or object)."""

    file: str
    row: int
    line: int | None
    error: str
    raw: Any

    def as_json(self) -> dict:
        raw = json.loads(json.dumps(self.raw, ensure_ascii=False, default=repr))  # e.g. bytes from a Parquet file
        return {"file": self.file, "row": self.row, "line": self.line, "error": self.error, "raw": raw}


def load_pairs(
    path: str | Path | list[str | Path],
    processor=None,
    skip_bad_rows: bool = False,
    rejects_path: str | Path | None = None,
    progress: bool = True,
):
    """Load training rows from JSONL or Parquet file(s) into a `datasets.Dataset`, validated row by row.

    With a `processor`, every query and product is also built as training will build it (images opened and decoded,
    keys and types checked by `Moon3Processor`). Bad rows raise `ValueError` naming the file, its row (and line) and the
    field; with `skip_bad_rows` they are left out, counted, and written to `rejects_path` (JSON Lines) instead.
    Rows may have any attribute keys, differing between files and between rows of one file.
    """
    records, rejects = read_records(path, skip_bad_rows=skip_bad_rows)
    if processor is not None:
        records, more = check_records(records, processor, skip_bad_rows=skip_bad_rows, progress=progress)
        rejects += more
    report_rejects(rejects, rejects_path, len(records))
    return records_to_dataset(records)


def read_records(path, skip_bad_rows: bool = False) -> tuple[list[RowRecord], list[RowReject]]:
    """Parse and statically validate the rows of `path` (one file or a list). Returns (good rows, rejects)."""
    paths = [Path(p) for p in (path if isinstance(path, (list, tuple)) else [path])]
    if not paths:
        raise ValueError("no training data files given.")
    for p in paths:
        if not p.is_file():
            raise ValueError(f"training data file {str(p)!r} does not exist.")
        if p.suffix not in (".jsonl", ".json", ".parquet"):
            raise ValueError(f"training data must be .jsonl, .json or .parquet files, got {str(p)!r}.")
    records, rejects = [], []
    for p in paths:
        for index, line, raw, error in _read_file(p):
            where = f"{p} row {index}" + (f" (line {line})" if line is not None else "")
            try:
                if error is not None:
                    raise ValueError(f"{where}: {error}")
                row = validate_row(raw, where=where)
            except ValueError as failure:
                if not skip_bad_rows:
                    raise
                rejects.append(RowReject(str(p), index, line, str(failure), raw))
                continue
            records.append(RowRecord(where, row))
    if not records and not rejects:
        raise ValueError(f"no training rows in {[str(p) for p in paths]}.")
    return records, rejects


def check_records(records, processor, skip_bad_rows: bool = False, progress: bool = True):
    """Build every query and product of `records` with `processor` as training will (images opened and decoded).

    Returns (good records, rejects); raises `ValueError` naming the row and field unless `skip_bad_rows`.
    """
    from tqdm.auto import tqdm

    good, rejects = [], []
    for record in tqdm(records, desc="Checking rows (images, keys, types)", unit="row", disable=not progress):
        try:
            check_row_with_processor(record.row, processor, record.where)
        except ValueError as failure:
            if not skip_bad_rows:
                raise
            file, row, line = _parse_where(record.where)
            rejects.append(RowReject(file, row, line, str(failure), clean_item(record.row)))
            continue
        good.append(record)
    return good, rejects


def check_row_with_processor(row: Mapping[str, Any], processor, where: str) -> None:
    """Raise `ValueError` naming `where` and the field if `processor` cannot build the row's query or products."""
    items = [("query", "query", query_item(row["query"]))]
    items.append(("positive", "document", clean_item(row["positive"])))
    items += [(f"negatives[{n}]", "document", clean_item(p)) for n, p in enumerate(row.get("negatives") or [])]
    for field, kind, item in items:
        try:
            processor.build_messages(item, kind=kind)
        except (ValueError, TypeError, OSError) as error:
            message = str(error)
            for prefix in ("queries[0]", "products[0]"):  # the processor names the item of a one-item call
                if message.startswith(prefix):
                    message = f"{field!r}{message[len(prefix) :]}"
                    break
            else:
                message = f"{field!r}: {message}"
            raise ValueError(f"{where}: {message}") from error


def report_rejects(rejects: list[RowReject], rejects_path, kept: int) -> None:
    """Write `rejects` to `rejects_path` (JSON Lines, atomically) and log their count; refuse an empty result."""
    if rejects:
        if rejects_path is not None:
            write_jsonl((reject.as_json() for reject in rejects), Path(rejects_path))
        logger.warning(
            "skipped %d bad training rows (kept %d)%s",
            len(rejects),
            kept,
            f"; they are listed in {rejects_path}" if rejects_path is not None else "",
        )
        print(
            f"skipped {len(rejects)} bad rows, kept {kept}" + (f"; rejects in {rejects_path}" if rejects_path else "")
        )
    if kept == 0:
        first = f" First error: {rejects[0].error}" if rejects else ""
        raise ValueError(f"no valid training rows left after skipping {len(rejects)} bad rows.{first}")


def records_to_dataset(records: list[RowRecord]):
    """The rows of `records` as a `datasets.Dataset` with the schema of `row_features`."""
    from datasets import Dataset

    return Dataset.from_list([record.row for record in records], features=row_features())


def rows_to_dataset(rows: Iterable[Mapping[str, Any]], source: str = "rows"):
    """Validate in-memory rows (e.g. `synthetic_rows`) and store them like loaded files."""
    records = [
        RowRecord(f"{source} row {i}", validate_row(row, where=f"{source} row {i}")) for i, row in enumerate(rows)
    ]
    return records_to_dataset(records)


def _parse_where(where: str) -> tuple[str, int, int | None]:
    head, _, tail = where.rpartition(" row ")
    parts = tail.split(" (line ")
    line = int(parts[1].rstrip(")")) if len(parts) > 1 else None
    return head, int(parts[0]), line


_JSON_HINT = (
    "Each line of a .jsonl file must hold one complete JSON object (a row); a pretty-printed JSON file spans lines: "
    "write one object per line (e.g. `jq -c '.[]' rows.json > rows.jsonl`)."
)


def _read_file(path: Path):
    """Yield (row index, line number or None, raw row or text, parse error or None) for each row of `path`."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as error:  # pyarrow raises several types for a damaged file
            raise ValueError(f"{path}: cannot read it as Parquet ({type(error).__name__}: {error}).") from error
        for index, row in enumerate(table.to_pylist()):
            yield index, None, row, None
        return
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error}); save the file as UTF-8 JSON Lines.") from error
    if path.suffix == ".json" and text.lstrip().startswith("["):  # a JSON array of rows
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}: invalid JSON array at line {error.lineno} column {error.colno}: {error.msg}."
            ) from error
        for index, row in enumerate(rows):
            yield index, None, row, None if isinstance(row, dict) else _not_an_object(row)
        return
    index = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            yield index, number, line, f"invalid JSON at column {error.colno}: {error.msg}. {_json_hint(line)}"
        else:
            yield index, number, row, None if isinstance(row, dict) else _not_an_object(row)
        index += 1


def _json_hint(line: str) -> str:
    """What to fix for a line that is not valid JSON."""
    text = line.strip()
    if text.startswith("[") or text in ("]", "],"):
        return "The file looks like a JSON array: " + _JSON_HINT
    if (text.startswith("{") and not text.endswith("}")) or text.startswith(('"', "}")):
        return "This row continues on another line: " + _JSON_HINT
    return "Fix the JSON syntax at that column (double quotes around keys and strings, no trailing commas)."


def _not_an_object(value: Any) -> str:
    if isinstance(value, list):
        return "this line holds a JSON array; the file looks like a JSON array: " + _JSON_HINT
    return f"a row must be a JSON object with 'query' and 'positive', got a {type(value).__name__}. {_JSON_HINT}"


def validate_row(row: Any, index: int = 0, source: str = "data", where: str | None = None) -> dict:
    """Raise `ValueError` if `row` is not a valid training row (see the module docstring); return its stored form.

    Errors name `where` (default `"<source> row <index>"`) and the field, e.g. `positive.attributes['size']`.
    """
    where = where or f"{source} row {index}"
    if not isinstance(row, Mapping):
        raise ValueError(f"{where}: {_not_an_object(row)}")
    row = _decode_stored(row)
    unknown = sorted((str(key) for key, value in row.items() if key not in ROW_KEYS and value is not None))
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; allowed keys are {sorted(ROW_KEYS)}.")
    query = clean_item(row.get("query"))
    if query is None or query == {} or query == "":
        raise ValueError(f"{where}: 'query' is missing or empty; give query text, an image, or both.")
    if isinstance(query, str):
        query = {"text": query}
    elif isinstance(query, Mapping):
        _check_keys(query, QUERY_KEYS, f"{where}: 'query'")
        _check_text(query, "text", f"{where}: 'query'")
    else:
        raise ValueError(
            f"{where}: 'query' must be a string or an object with 'text'/'image', got {type(query).__name__}."
        )
    query_images = _check_images(query, f"{where}: 'query'")
    if not (str(query.get("text") or "").strip() or query_images):
        raise ValueError(f"{where}: 'query' needs non-empty 'text' or an 'image', got {dict(query)}.")
    stored = {
        "query": {"text": query.get("text"), "images": query_images or None},
        "positive": _validate_product(row.get("positive"), f"{where}: 'positive'"),
    }
    negatives = clean_item(row.get("negatives"))
    if negatives is not None and not isinstance(negatives, list):
        raise ValueError(f"{where}: 'negatives' must be a list of products, got {type(negatives).__name__}.")
    stored["negatives"] = [_validate_product(n, f"{where}: 'negatives[{i}]'") for i, n in enumerate(negatives or [])]
    reasoning = row.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, str):
        raise ValueError(f"{where}: 'reasoning' must be a string, got {type(reasoning).__name__}.")
    stored["reasoning"] = reasoning
    positive_reasoning = row.get("positive_reasoning")
    if positive_reasoning is not None and not isinstance(positive_reasoning, str):
        raise ValueError(f"{where}: 'positive_reasoning' must be a string, got {type(positive_reasoning).__name__}.")
    stored["positive_reasoning"] = positive_reasoning
    return stored


def _validate_product(product: Any, where: str) -> dict:
    product = clean_item(product)
    if not isinstance(product, Mapping):
        raise ValueError(f"{where} must be a product object with 'title'/'attributes'/'images', got {product!r}.")
    _check_keys(product, PRODUCT_KEYS, where)
    for key in ("title", "description"):
        _check_text(product, key, where)
    product_id = product.get("id")
    if product_id is not None and (isinstance(product_id, bool) or not isinstance(product_id, (str, int))):
        raise ValueError(f"{where}.id must be a string or an integer, got {type(product_id).__name__}.")
    attributes = product.get("attributes")
    if attributes is not None:
        if not isinstance(attributes, Mapping):
            raise ValueError(
                f"{where}.attributes must be an object of name -> value, got {type(attributes).__name__}."
            )
        for name, value in attributes.items():
            _check_attribute_value(value, f"{where}.attributes[{name!r}]")
    images = _check_images(product, where)
    has_text = str(product.get("title") or "").strip() or attributes or str(product.get("description") or "").strip()
    if not has_text and not images:
        raise ValueError(f"{where} is empty: it needs a title, attributes, a description or an image.")
    return {
        "id": None if product_id is None else str(product_id),
        "title": product.get("title"),
        "attributes": None if attributes is None else json.dumps(dict(attributes), ensure_ascii=False),
        "description": product.get("description"),
        "images": images or None,
    }


def _check_keys(item: Mapping, allowed: frozenset, where: str) -> None:
    unknown = sorted(str(key) for key in item if key not in allowed)
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; allowed keys are {sorted(allowed)}.")


def _check_text(item: Mapping, key: str, where: str) -> None:
    if key in item and not isinstance(item[key], str):
        raise ValueError(f"{where}.{key} must be a string, got {type(item[key]).__name__} ({item[key]!r}).")


def _check_attribute_value(value: Any, where: str) -> None:
    """Attribute values are strings, finite numbers, booleans, or lists of those."""
    values = value if isinstance(value, list) else [value]
    for item in values:
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{where} is {item}; give a finite number or drop the attribute.")
        if not isinstance(item, (str, int, float, bool)):
            raise ValueError(
                f"{where} must be a string, number, boolean or a list of those, got {type(item).__name__} ({item!r})."
            )


def _check_images(item: Mapping, where: str) -> list[str]:
    """The item's image paths as a list (from `image` or `images`); raises on other types."""
    if "image" in item and "images" in item:
        raise ValueError(f"{where} has both 'image' and 'images'; use 'images' for a list.")
    key = "images" if "images" in item else "image"
    images = item.get(key, [])
    images = [images] if isinstance(images, str) else images
    if not isinstance(images, list) or not all(isinstance(p, str) and p.strip() for p in images):
        raise ValueError(f"{where}.{key} must be an image path or a list of non-empty paths, got {images!r}.")
    return images


def _decode_stored(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """Rows re-read from a Parquet file written by `records_to_dataset` hold `attributes` as JSON text: decode it."""

    def product(value):
        if isinstance(value, Mapping) and isinstance(value.get("attributes"), str):
            return {**value, "attributes": _json_object(value["attributes"])}
        return value

    row = dict(row)
    if "positive" in row:
        row["positive"] = product(row["positive"])
    if isinstance(row.get("negatives"), list):
        row["negatives"] = [product(n) for n in row["negatives"]]
    return row


def _json_object(text: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text  # not stored by us: validation reports the string
    return value if isinstance(value, dict) else text


def clean_item(item: Any) -> Any:
    """Drop null values from nested dicts (Arrow fills absent struct fields with null) and empty image lists; decode
    `attributes` stored as JSON text (see `row_features`)."""
    if isinstance(item, Mapping):
        cleaned = {key: clean_item(value) for key, value in item.items() if value is not None}
        if isinstance(cleaned.get("attributes"), str):
            cleaned["attributes"] = _json_object(cleaned["attributes"])
        return {key: value for key, value in cleaned.items() if not (key in ("images", "image") and value == [])}
    if isinstance(item, list):
        return [clean_item(value) for value in item if value is not None]
    return item


def product_key(product: Mapping[str, Any]) -> int:
    """A stable 63-bit key of a product (its `id` when it has one), to tell duplicates apart across a batch."""
    product = clean_item(product)
    text = str(product["id"]) if "id" in product else json.dumps(product, sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def query_item(query: Any) -> Any:
    """The query as `Moon3Processor(queries=...)` takes it: a string or a cleaned {'text', 'image'} dict."""
    query = clean_item(query)
    if isinstance(query, Mapping) and set(query) == {"text"}:
        return query["text"]
    return query


def to_grpo_dataset(dataset, processor):
    """Add TRL's columns to a validated dataset: a conversational `prompt` built by `processor.build_messages`
    (reason mode: the chat template ends the prompt with `<think>`) and `images` (paths decoded by `datasets`).

    Every message's content becomes a list of parts, so that Arrow sees one type for `content`.
    """
    from datasets import Image, Sequence

    def add_prompt(row):
        query = query_item(row["query"])
        images = _query_images(query)
        # TRL loads the images from the `images` column: build the messages from the text alone (build_messages would
        # load the images too) and prepend one image part per image.
        text = query if not isinstance(query, Mapping) else str(query.get("text") or "").strip()
        messages, _ = processor.build_messages(text or "-", "query")
        prompt = [
            {
                "role": m["role"],
                "content": [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str) else m["content"],
            }
            for m in messages
        ]
        if not text:  # an image-only query: its user turn holds only the image
            prompt[-1]["content"] = []
        if images:
            prompt[-1]["content"] = [{"type": "image"} for _ in images] + prompt[-1]["content"]
        return {"prompt": prompt, "images": [str(p) for p in images]}

    dataset = dataset.map(add_prompt, desc="Building GRPO prompts")
    if any(len(images) for images in dataset["images"]):
        return dataset.cast_column("images", Sequence(Image()))
    return dataset.remove_columns("images")


def _query_images(query: Any) -> list:
    if not isinstance(query, Mapping):
        return []
    images = query.get("images", query.get("image", []))
    return [images] if isinstance(images, (str, Path)) else list(images)


# --------------------------------------------------------------------------- collating (stage 1)


class Moon3PairCollator:
    """Rows -> model inputs for stage 1, as chunks of at most `chunk_size` sequences (0 = one chunk).

    Sequences are the B queries first (direct mode, `...<think></think><emb>`, unlabelled), then the B positives, then
    `num_hard_negatives` negatives per row (rows with fewer are padded with their own positive, which the loss masks
    out by key), then one SFT sequence per query that has a reasoning target: the reason-mode sequence
    `prompt<think>reasoning</think><emb>`, labelled on everything after `<think>`, then one per positive that has a
    `positive_reasoning` target (the document-side prompt, so that reason mode also learns to reason about
    products). Products are direct mode in the contrastive loss.

    The main contrastive loss embeds queries in direct mode, never after their gold reasoning: the targets are written
    from the positive's own attributes, so an embedding read after them is trained to copy the answer from the
    reasoning and learns nothing that direct-mode queries, or the model's own reasoning, can use. The SFT sequences
    teach the reasoning; stage 2 trains the embeddings after the model's own reasoning.

    With `reasoned_queries=True` the collator appends R more sequences, one per query with a reasoning target:
    `prompt<think>reasoning</think><emb>` unlabelled, for a second InfoNCE term that trains reason mode's readout
    (`Moon3ContrastiveConfig.reasoned_contrastive_weight`). Their reasoning is the target with each field's value
    swapped, with chance `reasoning_noise`, for the same field's value of another row of the batch
    (`corrupt_reasoning`), so that the readout learns to use reasoning that is sometimes wrong, as the model's own
    is, instead of copying the answer. The swaps are drawn from `seed` and the batch's product keys: the same batch
    gets the same swaps on every run and after a resume.

    With `attribute_classes` ({field: [value, ...]}), each chunk also holds `attribute_labels` (Tensor[n, F] int64,
    F = len(attribute_classes)): for each of the B queries and N documents that holds an image, the index of its
    product's value of each field (a query's product is its positive); -100 where the sequence has no image or the
    product lacks the field, and on every SFT and reasoned sequence. They train the photo attribute head
    (`Moon3ContrastiveConfig.photo_attribute_weight`).

    Returns a dict: `chunks` (list of processor outputs, each with `labels`), `num_queries` (B), `doc_keys`
    (Tensor[N] int64 product keys, N = B * (1 + num_hard_negatives)) and `reasoned_rows` (Tensor[R] int64: the row
    of each reasoned query, in order; empty without `reasoned_queries`). The R reasoned queries are the last R
    sequences.
    """

    def __init__(
        self,
        processor,
        chunk_size: int = 0,
        num_hard_negatives: int = 0,
        reasoned_queries: bool = False,
        reasoning_noise: float = 0.0,
        seed: int = 0,
        attribute_classes: Mapping[str, list[str]] | None = None,
    ):
        if not 0.0 <= reasoning_noise <= 1.0:
            raise ValueError(f"reasoning_noise is a probability in [0, 1], got {reasoning_noise}.")
        self.processor = processor
        self.chunk_size = chunk_size
        self.num_hard_negatives = num_hard_negatives
        self.reasoned_queries = reasoned_queries
        self.reasoning_noise = reasoning_noise
        self.seed = seed
        self.attribute_index = {
            name: {value: index for index, value in enumerate(values)}
            for name, values in (attribute_classes or {}).items()
        }
        tokenizer = processor.tokenizer
        self.think_token_id = tokenizer.convert_tokens_to_ids(MOON3_TOKENS["think"])
        self.closing_text = MOON3_TOKENS["think_end"] + MOON3_TOKENS["emb"]

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        # (kind, item, reasoning or None, labelled)
        sequences = [("query", query_item(row["query"]), None, False) for row in rows]
        documents = [clean_item(row["positive"]) for row in rows]
        for row in rows:
            negatives = [clean_item(n) for n in (row.get("negatives") or [])][: self.num_hard_negatives]
            documents += negatives + [clean_item(row["positive"])] * (self.num_hard_negatives - len(negatives))
        sequences += [("document", doc, None, False) for doc in documents]
        reasoned_rows = [index for index, row in enumerate(rows) if (row.get("reasoning") or "").strip()]
        sequences += [
            ("query", query_item(rows[i]["query"]), rows[i]["reasoning"].strip(), True) for i in reasoned_rows
        ]
        sequences += [
            ("document", clean_item(row["positive"]), row["positive_reasoning"].strip(), True)
            for row in rows
            if row.get("positive_reasoning") and row["positive_reasoning"].strip()
        ]
        doc_keys = torch.tensor([product_key(doc) for doc in documents], dtype=torch.long)
        if not self.reasoned_queries:
            reasoned_rows = []
        if reasoned_rows:
            rng = random.Random(hash_ints([self.seed, *doc_keys[: len(rows)].tolist()]))
            noisy = corrupt_reasoning([rows[i]["reasoning"].strip() for i in reasoned_rows], self.reasoning_noise, rng)
            sequences += [
                ("query", query_item(rows[i]["query"]), text, False) for i, text in zip(reasoned_rows, noisy)
            ]
        size = self.chunk_size or len(sequences)
        chunks = [self._encode(sequences[start : start + size]) for start in range(0, len(sequences), size)]
        if self.attribute_index:
            sources = [
                clean_item(row["positive"]) if _query_images(query_item(row["query"])) else None for row in rows
            ]
            sources += [doc if doc.get("images") or doc.get("image") else None for doc in documents]
            labels = self._attribute_labels(sources + [None] * (len(sequences) - len(sources)))  # (all sequences, F)
            for start, chunk in zip(range(0, len(sequences), size), chunks, strict=True):
                chunk["attribute_labels"] = labels[start : start + size]
        return {
            "chunks": chunks,
            "num_queries": len(rows),
            "doc_keys": doc_keys,
            "reasoned_rows": torch.tensor(reasoned_rows, dtype=torch.long),
        }

    def _attribute_labels(self, products: list[Mapping[str, Any] | None]):
        """Class indices of each sequence's product (Tensor[n, F] int64): -100 for None, a missing field or a value
        outside the classes."""
        import torch

        labels = torch.full((len(products), len(self.attribute_index)), -100, dtype=torch.long)
        for row, product in enumerate(products):
            attributes = (product or {}).get("attributes") or {}
            for column, (name, index) in enumerate(self.attribute_index.items()):
                labels[row, column] = index.get(str(attributes.get(name, "")).strip(), -100)
        return labels

    def _encode(self, sequences):
        import torch

        texts, images = [], []
        for kind, item, reasoning, _ in sequences:
            mode = "reason" if reasoning else "direct"
            (text,), item_images = self.processor.render([item], kind=kind, mode=mode)
            texts.append(text + reasoning + self.closing_text if reasoning else text)
            images.extend(item_images)
        batch = self.processor(
            text=texts, images=images or None, padding=True, padding_side="left", return_tensors="pt"
        )
        input_ids = batch["input_ids"]
        positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)  # (B, L)
        think_at = torch.where(input_ids == self.think_token_id, positions, -1).amax(dim=1, keepdim=True)  # (B, 1)
        is_labelled = torch.tensor([labelled for *_, labelled in sequences]).unsqueeze(1)  # (B, 1)
        labelled = (positions > think_at) & is_labelled & batch["attention_mask"].bool()
        batch["labels"] = input_ids.masked_fill(~labelled, -100)
        return batch


def attribute_classes(rows: Iterable[Mapping[str, Any]], fields: Iterable[str]) -> dict[str, list[str]]:
    """The values each attribute `field` takes over the rows' products (positives and negatives), sorted.

    Raises `ValueError` naming the fields no product has.

    >>> attribute_classes([{"positive": {"attributes": {"usage": "Sports"}}}], ["usage"])
    {'usage': ['Sports']}
    """
    fields = list(fields)
    values = {name: set() for name in fields}
    for row in rows:
        row = _decode_stored(row)
        for product in [row.get("positive"), *(row.get("negatives") or [])]:
            attributes = clean_item(product).get("attributes") if isinstance(product, Mapping) else None
            for name in fields:
                value = str((attributes or {}).get(name, "")).strip()
                if value:
                    values[name].add(value)
    missing = [name for name in fields if not values[name]]
    if missing:
        raise ValueError(
            f"photo_attribute_fields {missing}: no training product has them in its attributes. Name fields the "
            "products have (the fashion data: articleType baseColour gender season usage) or set "
            "photo_attribute_weight 0."
        )
    return {name: sorted(values[name]) for name in fields}


def hash_ints(values: Iterable[int]) -> int:
    """A 63-bit seed from integers that is the same on every machine and Python version."""
    digest = hashlib.sha256(",".join(str(int(v)) for v in values).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def corrupt_reasoning(reasonings: list[str], noise: float, rng: random.Random) -> list[str]:
    """Swap each field value of each reasoning, with chance `noise`, for the same field's value in another one.

    Reasonings are written as `Moon3Processor.format_reasoning` writes them (`name: value; name: value.`). A field
    that no other reasoning of the list states keeps its value; a drawn value may equal the original (the swap then
    changes nothing), so the share of changed values is at most `noise`. A reasoning that is not in that form (free
    text) is returned unchanged.

    Example:
        >>> corrupt_reasoning(["colour: Red; usage: Casual.", "colour: Blue."], 1.0, random.Random(0))
        ['colour: Blue; usage: Casual.', 'colour: Red.']
    """
    parsed = [_reasoning_fields(text) for text in reasonings]  # [] for free text
    values_by_name: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for index, fields in enumerate(parsed):
        for name, value in fields:
            values_by_name[name].append((index, value))
    out = []
    for index, fields in enumerate(parsed):
        if not fields:
            out.append(reasonings[index])
            continue
        parts = []
        for name, value in fields:
            others = [other for owner, other in values_by_name[name] if owner != index]
            if others and rng.random() < noise:
                value = rng.choice(others)
            parts.append(f"{name}: {value}")
        out.append("; ".join(parts) + ("." if parts else ""))
    return out


def _reasoning_fields(text: str) -> list[tuple[str, str]]:
    """`name: value; name: value.` -> [(name, value), ...]; [] when the text does not read back exactly."""
    body = text.strip()
    body = body[:-1] if body.endswith(".") else body
    fields = [tuple(part.strip() for part in piece.partition(":")[::2]) for piece in body.split(";")]
    if not all(name and value for name, value in fields):
        return []
    if "; ".join(f"{name}: {value}" for name, value in fields) + "." != text.strip():
        return []
    return fields


# --------------------------------------------------------------------------- builders


def write_jsonl(rows: Iterable[Mapping[str, Any]], out: Path) -> int:
    """Write rows to `out` (JSON Lines, written to a temporary file, then moved in). Returns the row count.

    Nothing is left behind when writing fails (the temporary file is removed); a folder as `out` is refused.
    """
    import os
    import tempfile

    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a folder; give a file name such as {str(out / 'rows.jsonl')!r}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(staging, 0o666 & ~_umask())
        os.replace(staging, out)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return count


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


# How `read_fashion_products` writes a product's attributes (`build-fashion --product-record`):
# - "catalogue": all seven catalogue columns in FASHION_ATTRIBUTES order (gender, masterCategory, subCategory,
#   articleType, baseColour, season, usage); the record every checkpoint before 2026-12-03 was trained on;
# - "benchmark": the record the benchmarks and `catalog.embed` give the model (`benchmarks.convert_fashion.make_product`,
#   stored with sorted keys, then `benchmarks.data_format.product_view`): articleType, baseColour, gender, season,
#   usage in that order, the category path not shown. A model trained on
#   "catalogue" records sees a different attribute list at test time and copies the wrong slot (docs/reasoning.md).
PRODUCT_RECORDS = ("catalogue", "benchmark")


def read_fashion_products(
    data_dir: Path, split: str | None = "train", product_record: str = "catalogue"
) -> list[dict]:
    """Products of the fashion catalogue's fixed `split` (None = all) as MOON3 product records (`PRODUCT_RECORDS`)."""
    if product_record not in PRODUCT_RECORDS:
        raise ValueError(f"product_record must be one of {list(PRODUCT_RECORDS)}, got {product_record!r}.")
    data_dir = Path(data_dir)
    path = data_dir / "products.csv"
    if not path.is_file():
        raise ValueError(f"{str(path)!r} not found; --data must be the fashion-product-images folder.")
    products = []
    with path.open(newline="") as handle:
        for record in csv.DictReader(handle):
            if split is not None and record["split"] != split:
                continue
            if product_record == "benchmark":
                products.append(_benchmark_product(record, data_dir))
                continue
            attributes = {key: record[key].strip() for key in FASHION_ATTRIBUTES if record.get(key, "").strip()}
            product = {"id": record["id"], "title": record["productDisplayName"].strip(), "attributes": attributes}
            if record.get("image"):
                product["images"] = [str((data_dir / record["image"]).resolve())]
            products.append(product)
    return products


# The attributes of a benchmark product record (`benchmarks.convert_fashion.make_product`), in the order its
# products.jsonl stores them (sorted keys); `train` does not import `benchmarks`, and
# tests/train/test_data.py checks that the two give the same rendered text.
BENCHMARK_PRODUCT_ATTRIBUTES = ("articleType", "baseColour", "gender", "season", "usage")


def _catalogue_value(value) -> str:
    text = "" if value is None else str(value).strip()
    return "" if text.lower() in ("", "nan", "none") else text


def _benchmark_product(record: dict, data_dir: Path) -> dict:
    """One catalogue row as the benchmarks' product view gives it to the model (the "benchmark" record)."""
    values = {key: _catalogue_value(record.get(key)) for key in BENCHMARK_PRODUCT_ATTRIBUTES}
    product = {
        "id": str(record["id"]),
        "title": _catalogue_value(record.get("productDisplayName")),
        "attributes": {key: value for key, value in values.items() if value},
    }
    if record.get("image"):
        product["images"] = [str((data_dir / record["image"]).resolve())]
    return product


FASHION_QUERY_KINDS = ("title", "image", "image+title", "attribute")


def fashion_rows(
    products: list[dict],
    kinds: Iterable[str] = ("title", "image", "attribute"),
    max_per_attribute_query: int = 3,
    hard_negatives: int = 0,
    seed: int = 0,
    reasoning_layout: str = "scored",
    product_reasoning: bool = False,
) -> list[dict]:
    """Training rows from fashion products: title, image or image+title -> product, attribute query -> products.

    Reasoning targets come from the attributes (`train.fashion.fashion_reasoning_target`, in `reasoning_layout`):
    all of them for title and image queries, those the query names for attribute queries. With
    `product_reasoning`, each row also carries its positive's own target (`positive_reasoning`). Hard negatives
    share the product's article type but differ in colour or audience.
    """

    rng = random.Random(seed)
    kinds = set(kinds)
    unknown = kinds - set(FASHION_QUERY_KINDS)
    if unknown:
        raise ValueError(f"kinds must be among {list(FASHION_QUERY_KINDS)}, got {sorted(unknown)}.")
    if reasoning_layout not in REASONING_LAYOUTS:
        raise ValueError(f"reasoning_layout must be one of {sorted(REASONING_LAYOUTS)}, got {reasoning_layout!r}.")
    if hard_negatives < 0 or max_per_attribute_query < 1:
        raise ValueError(
            f"hard_negatives must be >= 0 (got {hard_negatives}) and max_per_attribute_query >= 1 "
            f"(got {max_per_attribute_query})."
        )
    by_type = defaultdict(list)
    for product in products:
        by_type[product["attributes"].get("articleType")].append(product)

    def negatives_for(product):
        if not hard_negatives:
            return []
        attrs = product["attributes"]
        pool = [
            other
            for other in by_type[attrs.get("articleType")]
            if other["id"] != product["id"]
            and (other["attributes"].get("baseColour"), other["attributes"].get("gender"))
            != (attrs.get("baseColour"), attrs.get("gender"))
        ]
        return rng.sample(pool, min(hard_negatives, len(pool)))

    def target(attributes):
        return fashion_reasoning_target(attributes, reasoning_layout)

    def row(query, product, reasoning):
        out = {"query": query, "positive": product, "reasoning": reasoning}
        if product_reasoning:
            out["positive_reasoning"] = target(product["attributes"])
        negatives = negatives_for(product)
        if negatives:
            out["negatives"] = negatives
        return out

    rows = []
    for product in products:
        reasoning = target(product["attributes"])
        if "title" in kinds and product["title"]:
            rows.append(row({"text": product["title"]}, product, reasoning))
        if "image" in kinds and product.get("images"):
            rows.append(row({"image": product["images"][0]}, product, reasoning))
        if "image+title" in kinds and product["title"] and product.get("images"):
            rows.append(row({"text": product["title"], "image": product["images"][0]}, product, reasoning))
    if "attribute" in kinds:
        groups = defaultdict(list)
        for product in products:
            attrs = product["attributes"]
            if all(attrs.get(key) for key in QUERY_ATTRIBUTES):
                groups[tuple(attrs[key] for key in QUERY_ATTRIBUTES)].append(product)
        for values, members in sorted(groups.items()):
            named = dict(zip(QUERY_ATTRIBUTES, values, strict=True))
            text = " ".join(value.lower() for value in values)
            reasoning = target(named)
            for product in rng.sample(members, min(max_per_attribute_query, len(members))):
                rows.append(row({"text": text}, product, reasoning))
    return rows


def abt_buy_rows(data_dir: Path) -> list[dict]:
    """Same-product pairs across Abt (query side, its name) and Buy (product side), from the TRAIN split only
    (`train.csv` rows with label 1), so that `test.csv` and its products stay unseen."""
    data_dir = Path(data_dir)
    path = data_dir / "train.csv"
    if not path.is_file():
        raise ValueError(f"{str(path)!r} not found; --data must be the abt-buy folder.")
    rows = []
    with path.open(newline="") as handle:
        for record in csv.DictReader(handle):
            if record["label"] != "1":
                continue
            product = {"id": f"buy-{record['tableB_id']}", "title": record["tableB_name"].strip()}
            if record["tableB_description"].strip():
                product["description"] = record["tableB_description"].strip()
            if record["tableB_price"].strip():
                product["attributes"] = {"price": record["tableB_price"].strip()}
            rows.append({"query": {"text": record["tableA_name"].strip()}, "positive": product})
    return rows


SYNTHETIC_TYPES = ("Shirts", "Jeans", "Dresses", "Watches", "Sandals", "Handbags", "Caps", "Jackets")
SYNTHETIC_COLOURS = ("Red", "Navy Blue", "Black", "White", "Green", "Yellow", "Pink", "Grey")
SYNTHETIC_GENDERS = ("Men", "Women")


def synthetic_rows(num_rows: int = 64, seed: int = 0) -> list[dict]:
    """A small learnable catalogue (audience x colour x type) with attribute-style queries and reasoning targets.

    It needs no files, so that tests and the tiny recipe run from a clean checkout.
    """

    if num_rows < 1:
        raise ValueError(f"num_rows must be >= 1, got {num_rows}.")
    rng = random.Random(seed)
    combos = [(g, c, t) for g in SYNTHETIC_GENDERS for c in SYNTHETIC_COLOURS for t in SYNTHETIC_TYPES]
    rng.shuffle(combos)
    rows = []
    for index in range(num_rows):
        gender, colour, kind = combos[index % len(combos)]
        attributes = {"gender": gender, "baseColour": colour, "articleType": kind}
        product = {
            "id": f"syn-{index % len(combos)}",
            "title": f"Acme {gender} {colour} {kind}",
            "attributes": attributes,
        }
        query = f"{gender.lower()} {colour.lower()} {kind.lower()}"
        rows.append({"query": {"text": query}, "positive": product, "reasoning": fashion_reasoning(attributes)})
    return rows


# --------------------------------------------------------------------------- CLI


def at_least(minimum: int):
    """An argparse type: an integer >= `minimum`, with an error naming the bound."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    fashion = commands.add_parser("build-fashion", help="pairs from the fashion catalogue (products.csv)")
    fashion.add_argument("--data", type=Path, required=True, help="the fashion-product-images folder")
    fashion.add_argument("--split", default="train", choices=["train", "val", "test"], help="fixed split to use")
    fashion.add_argument(
        "--kinds",
        nargs="+",
        default=["title", "image", "attribute"],
        choices=list(FASHION_QUERY_KINDS),
        help="query kinds to build (image+title: the photo and the title together as one query)",
    )
    fashion.add_argument(
        "--reasoning-layout",
        default="scored",
        choices=sorted(REASONING_LAYOUTS),
        help="reasoning target layout (train/fashion.py): scored = gender, type, colour, usage, season in one order "
        "for every query kind; base-rate-first = the same five, highest majority rate first (usage, season, "
        "audience, colour, type); usage-first = scored with usage moved to the front; catalogue = every column, the layout the pre-reasoning-work checkpoint was trained on",
    )
    fashion.add_argument(
        "--product-reasoning",
        action="store_true",
        help="also write each positive's own reasoning target (positive_reasoning), for document-side SFT",
    )
    fashion.add_argument(
        "--product-record",
        default="catalogue",
        choices=list(PRODUCT_RECORDS),
        help="how a product's attributes are written (train/data.py PRODUCT_RECORDS): catalogue = the seven columns "
        "in catalogue order (the shipped checkpoint's data); benchmark = exactly the record benchmarks.run and "
        "catalog.embed give the model",
    )
    fashion.add_argument("--max-per-attribute-query", type=at_least(1), default=3, help="products per attribute query")
    fashion.add_argument("--hard-negatives", type=at_least(0), default=0, help="hard negatives per row (0 = none)")
    fashion.add_argument("--limit", type=at_least(0), default=0, help="use only the first N products (0 = all)")
    fashion.add_argument("--seed", type=int, default=0, help="seed for sampling negatives and attribute positives")
    fashion.add_argument("--out", type=Path, required=True, help="output .jsonl")
    abt = commands.add_parser("build-abt-buy", help="same-product pairs from Abt-Buy's train split")
    abt.add_argument("--data", type=Path, required=True, help="the abt-buy folder")
    abt.add_argument("--out", type=Path, required=True, help="output .jsonl")
    synthetic = commands.add_parser("synthetic", help="a tiny synthetic catalogue (no files needed)")
    synthetic.add_argument("--num-rows", type=at_least(1), default=64, help="number of rows (>= 1)")
    synthetic.add_argument("--seed", type=int, default=0, help="shuffle seed")
    synthetic.add_argument("--out", type=Path, required=True, help="output .jsonl")
    validate = commands.add_parser(
        "validate",
        help="check every row as training will read it (schema, keys, types; images opened with the processor)",
    )
    validate.add_argument("paths", type=Path, nargs="+", help=".jsonl or .parquet files")
    validate.add_argument(
        "--processor",
        type=Path,
        default=None,
        help="checkpoint folder whose processor builds the rows (default: this repository's shipped checkpoint)",
    )
    validate.add_argument("--schema-only", action="store_true", help="check the schema only, without the processor")
    validate.add_argument(
        "--skip-bad-rows", action="store_true", help="count bad rows and list them in --rejects instead of failing"
    )
    validate.add_argument("--rejects", type=Path, default=None, help="JSON Lines file for the rejected rows")
    return parser


def default_processor(path: Path | None = None):
    """The processor training uses to build rows: from `path` (a checkpoint folder) or the shipped checkpoint."""
    import moon3
    from moon3.processing_moon3 import Moon3Processor

    folder = Path(path) if path is not None else moon3.ROOT
    if not (folder / "processor_config.json").is_file():
        raise ValueError(f"--processor {str(folder)!r} has no processor_config.json; give a MOON3 checkpoint folder.")
    return Moon3Processor.from_pretrained(str(folder))


def main(argv: list[str] | None = None) -> None:
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if args.command == "validate":
            _validate_command(args)
            return
        if args.command == "build-fashion":
            products = read_fashion_products(args.data, args.split, args.product_record)
            products = products[: args.limit] if args.limit else products
            rows = fashion_rows(
                products,
                args.kinds,
                args.max_per_attribute_query,
                args.hard_negatives,
                args.seed,
                reasoning_layout=args.reasoning_layout,
                product_reasoning=args.product_reasoning,
            )
        elif args.command == "build-abt-buy":
            rows = abt_buy_rows(args.data)
        else:
            rows = synthetic_rows(args.num_rows, args.seed)
        if not rows:
            raise ValueError("no rows to write: the selection is empty (check --split, --limit and --kinds).")
        count = write_jsonl(rows, args.out)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"wrote {count} rows to {args.out}")


def _validate_command(args) -> None:
    if args.rejects is not None and not args.skip_bad_rows:
        raise ValueError("--rejects needs --skip-bad-rows.")
    processor = None if args.schema_only else default_processor(args.processor)
    rejects_path = args.rejects
    if args.skip_bad_rows and rejects_path is None:
        rejects_path = args.paths[0].with_name(args.paths[0].stem + ".rejects.jsonl")
    dataset = load_pairs(
        [str(p) for p in args.paths], processor=processor, skip_bad_rows=args.skip_bad_rows, rejects_path=rejects_path
    )
    checked = "schema" if processor is None else "schema, keys, types and images (with the processor)"
    print(f"{len(dataset)} valid rows in {[str(p) for p in args.paths]} ({checked} checked)")


if __name__ == "__main__":
    main()
