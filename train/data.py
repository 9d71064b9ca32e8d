"""MOON3 training data: the row format, loading and validation with `datasets`, and builders from ../shared/data.

Format (one JSON object per line in `.jsonl`, or one row per record in `.parquet`):

    {"query":     {"text": "women blue casual tops"}            # or {"image": "path.jpg"}, or both, or a plain string
     "positive":  {"id": "1234", "title": "...", "attributes": {"gender": "Women", ...},
                   "description": "...", "images": ["path.jpg"]}  # the product the query should retrieve
     "negatives": [{...product...}, ...]                          # optional hard negatives
     "reasoning": "audience: Women; colour: Blue; usage: Casual."}  # optional reasoning target for the query

Products take the keys `Moon3Processor` reads (`id`, `title`, `attributes`, `description`, `images`/`image`); queries
the keys `text` and `image`/`images`. Image paths are absolute or relative to the working directory (the builders write absolute paths). `null` values
and absent keys mean the same thing (Arrow fills missing struct fields with null, so they cannot be told apart).

Command line:

    python -m train.data build-fashion --data ../shared/data/fashion-product-images --split train --out fashion.jsonl
    python -m train.data build-abt-buy --data ../shared/data/abt-buy --out abt_buy.jsonl
    python -m train.data synthetic --num-rows 64 --out tiny.jsonl
    python -m train.data validate fashion.jsonl
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from train.build_tokenizer import MOON3_TOKENS
from train.fashion import fashion_reasoning

logger = logging.getLogger(__name__)

FASHION_ATTRIBUTES = ("gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage")
# Attributes an attribute-style query names, in the order a shopper would type them ("women blue casual tops").
QUERY_ATTRIBUTES = ("gender", "baseColour", "usage", "articleType")
ROW_KEYS = frozenset({"query", "positive", "negatives", "reasoning"})


# --------------------------------------------------------------------------- loading and validation


def load_pairs(path: str | Path | list[str | Path], validate: bool = True):
    """Load training rows from JSONL or Parquet file(s) into a `datasets.Dataset`, validated row by row.

    Raises `ValueError` naming the file, the row index and the field for malformed rows.
    """
    from datasets import load_dataset

    paths = [Path(p) for p in (path if isinstance(path, list) else [path])]
    for p in paths:
        if not p.is_file():
            raise ValueError(f"training data file {str(p)!r} does not exist.")
    suffixes = {p.suffix for p in paths}
    if suffixes <= {".jsonl", ".json"}:
        builder = "json"
    elif suffixes == {".parquet"}:
        builder = "parquet"
    else:
        raise ValueError(f"training data must be .jsonl or .parquet files (all of one kind), got {sorted(suffixes)}.")
    try:
        dataset = load_dataset(builder, data_files=[str(p) for p in paths], split="train")
    except Exception as error:  # Arrow errors (mixed types, bad JSON) are hard to read; say what to check
        raise ValueError(
            f"could not load {[str(p) for p in paths]} with datasets ({type(error).__name__}: {error}). Each row must "
            "be a JSON object; give `query` the same type on every row (e.g. always {'text': ...})."
        ) from error
    if validate:
        for index, row in enumerate(dataset):
            validate_row(row, index, source=str(paths[0]))
    return dataset


def validate_row(row: Mapping[str, Any], index: int = 0, source: str = "data") -> None:
    """Raise `ValueError` if `row` is not a valid training row (see the module docstring)."""
    where = f"{source} row {index}"
    unknown = sorted(key for key, value in row.items() if key not in ROW_KEYS and value is not None)
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; allowed keys are {sorted(ROW_KEYS)}.")
    query = clean_item(row.get("query"))
    if query is None or query == {} or query == "":
        raise ValueError(f"{where}: 'query' is missing or empty; give query text, an image, or both.")
    if isinstance(query, Mapping):
        if not (str(query.get("text") or "").strip() or query.get("image") or query.get("images")):
            raise ValueError(f"{where}: 'query' needs non-empty 'text' or an 'image', got {dict(query)}.")
    elif not isinstance(query, str):
        raise ValueError(
            f"{where}: 'query' must be a string or an object with 'text'/'image', got {type(query).__name__}."
        )
    _validate_product(row.get("positive"), f"{where}: 'positive'")
    negatives = row.get("negatives")
    if negatives is not None:
        if not isinstance(negatives, list):
            raise ValueError(f"{where}: 'negatives' must be a list of products, got {type(negatives).__name__}.")
        for n, negative in enumerate(negatives):
            _validate_product(negative, f"{where}: 'negatives[{n}]'")
    reasoning = row.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, str):
        raise ValueError(f"{where}: 'reasoning' must be a string, got {type(reasoning).__name__}.")


def _validate_product(product: Any, where: str) -> None:
    product = clean_item(product)
    if not isinstance(product, Mapping):
        raise ValueError(f"{where} must be a product object with 'title'/'attributes'/'images', got {product!r}.")
    has_text = str(product.get("title") or "").strip() or product.get("attributes") or product.get("description")
    if not has_text and not (product.get("images") or product.get("image")):
        raise ValueError(f"{where} is empty: it needs a title, attributes, a description or an image.")
    attributes = product.get("attributes")
    if attributes is not None and not isinstance(attributes, Mapping):
        raise ValueError(f"{where}.attributes must be an object of name -> value, got {type(attributes).__name__}.")


def clean_item(item: Any) -> Any:
    """Drop null values from nested dicts (Arrow fills absent struct fields with null) and empty image lists."""
    if isinstance(item, Mapping):
        cleaned = {key: clean_item(value) for key, value in item.items() if value is not None}
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
    `prompt<think>reasoning</think><emb>`, labelled on everything after `<think>`. Products are direct mode.

    The contrastive loss embeds queries in direct mode, never after their gold reasoning: the targets are written
    from the positive's own attributes, so an embedding read after them is trained to copy the answer from the
    reasoning (in-batch accuracy near 1) and learns nothing that direct-mode queries, or the model's own reasoning,
    can use. The SFT sequences teach the reasoning; stage 2 trains the embeddings after the model's own reasoning.

    Returns a dict: `chunks` (list of processor outputs, each with `labels`), `num_queries` (B) and `doc_keys`
    (Tensor[N] int64 product keys, N = B * (1 + num_hard_negatives)).
    """

    def __init__(self, processor, chunk_size: int = 0, num_hard_negatives: int = 0):
        self.processor = processor
        self.chunk_size = chunk_size
        self.num_hard_negatives = num_hard_negatives
        tokenizer = processor.tokenizer
        self.think_token_id = tokenizer.convert_tokens_to_ids(MOON3_TOKENS["think"])
        self.closing_text = MOON3_TOKENS["think_end"] + MOON3_TOKENS["emb"]

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        sequences = [("query", query_item(row["query"]), None) for row in rows]  # (kind, item, reasoning)
        documents = [clean_item(row["positive"]) for row in rows]
        for row in rows:
            negatives = [clean_item(n) for n in (row.get("negatives") or [])][: self.num_hard_negatives]
            documents += negatives + [clean_item(row["positive"])] * (self.num_hard_negatives - len(negatives))
        sequences += [("document", doc, None) for doc in documents]
        sequences += [
            ("query", query_item(row["query"]), row["reasoning"].strip())
            for row in rows
            if row.get("reasoning") and row["reasoning"].strip()
        ]
        size = self.chunk_size or len(sequences)
        chunks = [self._encode(sequences[start : start + size]) for start in range(0, len(sequences), size)]
        doc_keys = torch.tensor([product_key(doc) for doc in documents], dtype=torch.long)
        return {"chunks": chunks, "num_queries": len(rows), "doc_keys": doc_keys}

    def _encode(self, sequences):
        import torch

        texts, images = [], []
        for kind, item, reasoning in sequences:
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
        is_reasoned = torch.tensor([reasoning is not None for _, _, reasoning in sequences]).unsqueeze(1)  # (B, 1)
        labelled = (positions > think_at) & is_reasoned & batch["attention_mask"].bool()
        batch["labels"] = input_ids.masked_fill(~labelled, -100)
        return batch


# --------------------------------------------------------------------------- builders


def write_jsonl(rows: Iterable[Mapping[str, Any]], out: Path) -> int:
    """Write rows to `out` (JSON Lines, written to a temporary file, then moved in). Returns the row count."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_suffix(out.suffix + ".tmp")
    count = 0
    with staging.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    staging.replace(out)
    return count


def read_fashion_products(data_dir: Path, split: str | None = "train") -> list[dict]:
    """Products of the fashion catalogue's fixed `split` (None = all) as MOON3 product records."""
    data_dir = Path(data_dir)
    path = data_dir / "products.csv"
    if not path.is_file():
        raise ValueError(f"{str(path)!r} not found; --data must be the fashion-product-images folder.")
    products = []
    with path.open(newline="") as handle:
        for record in csv.DictReader(handle):
            if split is not None and record["split"] != split:
                continue
            attributes = {key: record[key].strip() for key in FASHION_ATTRIBUTES if record.get(key, "").strip()}
            product = {"id": record["id"], "title": record["productDisplayName"].strip(), "attributes": attributes}
            if record.get("image"):
                product["images"] = [str((data_dir / record["image"]).resolve())]
            products.append(product)
    return products


def fashion_rows(
    products: list[dict],
    kinds: Iterable[str] = ("title", "image", "attribute"),
    max_per_attribute_query: int = 3,
    hard_negatives: int = 0,
    seed: int = 0,
) -> list[dict]:
    """Training rows from fashion products: title -> product, image -> product, attribute query -> products.

    Reasoning targets come from the attributes (`Moon3Processor.format_reasoning`): all of them for title and image
    queries, those the query names for attribute queries. Hard negatives share the product's article type but
    differ in colour or audience.
    """

    rng = random.Random(seed)
    kinds = set(kinds)
    unknown = kinds - {"title", "image", "attribute"}
    if unknown:
        raise ValueError(f"kinds must be among ['title', 'image', 'attribute'], got {sorted(unknown)}.")
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

    def row(query, product, reasoning):
        out = {"query": query, "positive": product, "reasoning": reasoning}
        negatives = negatives_for(product)
        if negatives:
            out["negatives"] = negatives
        return out

    rows = []
    for product in products:
        reasoning = fashion_reasoning(product["attributes"])
        if "title" in kinds and product["title"]:
            rows.append(row({"text": product["title"]}, product, reasoning))
        if "image" in kinds and product.get("images"):
            rows.append(row({"image": product["images"][0]}, product, reasoning))
    if "attribute" in kinds:
        groups = defaultdict(list)
        for product in products:
            attrs = product["attributes"]
            if all(attrs.get(key) for key in QUERY_ATTRIBUTES):
                groups[tuple(attrs[key] for key in QUERY_ATTRIBUTES)].append(product)
        for values, members in sorted(groups.items()):
            named = dict(zip(QUERY_ATTRIBUTES, values, strict=True))
            text = " ".join(value.lower() for value in values)
            reasoning = fashion_reasoning(named)
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


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    fashion = commands.add_parser("build-fashion", help="pairs from the fashion catalogue (products.csv)")
    fashion.add_argument("--data", type=Path, required=True, help="the fashion-product-images folder")
    fashion.add_argument("--split", default="train", choices=["train", "val", "test"], help="fixed split to use")
    fashion.add_argument("--kinds", nargs="+", default=["title", "image", "attribute"], help="query kinds to build")
    fashion.add_argument("--max-per-attribute-query", type=int, default=3, help="products per attribute query")
    fashion.add_argument("--hard-negatives", type=int, default=0, help="hard negatives per row (0 = none)")
    fashion.add_argument("--limit", type=int, default=0, help="use only the first N products (0 = all)")
    fashion.add_argument("--seed", type=int, default=0, help="seed for sampling negatives and attribute positives")
    fashion.add_argument("--out", type=Path, required=True, help="output .jsonl")
    abt = commands.add_parser("build-abt-buy", help="same-product pairs from Abt-Buy's train split")
    abt.add_argument("--data", type=Path, required=True, help="the abt-buy folder")
    abt.add_argument("--out", type=Path, required=True, help="output .jsonl")
    synthetic = commands.add_parser("synthetic", help="a tiny synthetic catalogue (no files needed)")
    synthetic.add_argument("--num-rows", type=int, default=64, help="number of rows")
    synthetic.add_argument("--seed", type=int, default=0, help="shuffle seed")
    synthetic.add_argument("--out", type=Path, required=True, help="output .jsonl")
    validate = commands.add_parser("validate", help="load and validate data files")
    validate.add_argument("paths", type=Path, nargs="+", help=".jsonl or .parquet files")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.command == "build-fashion":
        products = read_fashion_products(args.data, args.split)
        products = products[: args.limit] if args.limit else products
        rows = fashion_rows(products, args.kinds, args.max_per_attribute_query, args.hard_negatives, args.seed)
    elif args.command == "build-abt-buy":
        rows = abt_buy_rows(args.data)
    elif args.command == "synthetic":
        rows = synthetic_rows(args.num_rows, args.seed)
    else:
        dataset = load_pairs([str(p) for p in args.paths])
        print(f"{len(dataset)} valid rows in {[str(p) for p in args.paths]}")
        return
    count = write_jsonl(rows, args.out)
    print(f"wrote {count} rows to {args.out}")


if __name__ == "__main__":
    main()
