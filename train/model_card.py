"""The Hub model card (README.md of an upload): YAML metadata with a model-index of the reference benchmark figures,
usage, limits and links that resolve on the Hub (absolute URLs only; an upload has no docs/ folder).

    >>> card = model_card(repo_id="org/moon3-mini", reference=json.loads(REFERENCE.read_text()))  # doctest: +SKIP
"""

from __future__ import annotations

import yaml

PAPER_URL = "https://arxiv.org/abs/2604.00513"
FASHION_DATASET = "ashraq/fashion-product-images-small"

# retrieval task keys of benchmarks.run -> (readable name, family); label tasks are named by task_title()
TASKS = {
    "fashion/retrieval/text2product": ("fashion text→product", "retrieval"),
    "fashion/retrieval/attribute_queries": ("fashion attribute queries", "retrieval"),
    "fashion/retrieval/text2image": ("fashion text→image", "retrieval"),
    "fashion/retrieval/image2text": ("fashion image→text", "retrieval"),
    "fashion/retrieval/image2product": ("fashion image→product", "retrieval"),
    "abt-buy/retrieval/matching": ("Abt-Buy same-product matching", "retrieval"),
}


def task_title(key: str) -> str:
    """A readable name for a benchmarks.run task key (`fashion/classification/articleType/image` ->
    `fashion articleType from photo`)."""
    if key in TASKS:
        return TASKS[key][0]
    parts = key.split("/")
    source = {"image": "photo", "title": "title"}.get(parts[-1], parts[-1])
    return f"{parts[0]} {parts[2]} from {source}"


def _family(key: str) -> str:
    return key.split("/")[1]


def _metric(key: str) -> tuple[str, str]:
    """(model-index metric type, shown name) of a task's primary metric."""
    return ("ndcg_at_10", "nDCG@10") if _family(key) == "retrieval" else ("accuracy", "accuracy")


def _dataset(key: str) -> dict:
    if key.startswith("abt-buy/"):
        return {"name": "Abt-Buy (Leipzig entity-resolution benchmark)", "type": "abt-buy", "split": "all"}
    return {"name": "Fashion Product Images (Small), fixed test split", "type": FASHION_DATASET, "split": "test"}


def model_index(name: str, reference: dict, mode: str = "direct") -> list[dict]:
    """The `model-index` metadata: one result per benchmark task, the primary metric of `mode`'s reference run."""
    results = []
    for key, value in sorted(reference[mode]["metrics"].items()):
        metric_type, metric_name = _metric(key)
        task_type = {"retrieval": "retrieval", "classification": "zero-shot-classification"}.get(
            _family(key), "zero-shot-classification"
        )
        results.append(
            {
                "task": {"type": task_type, "name": task_title(key)},
                "dataset": _dataset(key),
                "metrics": [{"type": metric_type, "value": value, "name": f"{metric_name} ({mode} mode)"}],
            }
        )
    return [{"name": name, "results": results}]


def metadata(name: str, reference: dict, base_model: str | None) -> dict:
    meta = {
        "language": ["en"],
        "license": "apache-2.0",
        "library_name": "transformers",
        "pipeline_tag": "feature-extraction",
        "tags": ["e-commerce", "multimodal-embedding", "sentence-transformers", "qwen3-vl", "custom_code"],
        "datasets": [FASHION_DATASET],
    }
    if base_model:
        meta["base_model"] = base_model
    meta["model-index"] = model_index(name, reference)
    return meta


def benchmark_table(reference: dict) -> str:
    modes = [mode for mode in ("direct", "reason") if mode in reference]
    lines = [
        "| task | metric | " + " | ".join(f"{mode} mode" for mode in modes) + " |",
        "|---|---|" + "---:|" * len(modes),
    ]
    for key in sorted(reference[modes[0]]["metrics"]):
        values = [reference[mode]["metrics"].get(key) for mode in modes]
        shown = " | ".join("n/a" if v is None else f"{v:.3f}" for v in values)
        lines.append(f"| {task_title(key)} | {_metric(key)[1]} | {shown} |")
    return "\n".join(lines)


def model_card(repo_id: str, reference: dict, base_model: str | None = None, config: dict | None = None) -> str:
    """README.md text of a Hub upload of a MOON3 checkpoint whose benchmark figures are `reference`
    (benchmarks/moon3_mini_reference.json's format)."""
    name = repo_id.rsplit("/", 1)[-1]
    config = config or {}
    dims = config.get("matryoshka_dims") or []
    origin = (
        f"fine-tuned from [{base_model}](https://huggingface.co/{base_model})"
        if base_model
        else "trained from scratch (random initialisation, no pretrained base model)"
    )
    front = yaml.safe_dump(metadata(name, reference, base_model), sort_keys=False, allow_unicode=True)
    return f"""---
{front}---

# {name}

A MOON3 multimodal e-commerce embedding model, {origin}: it turns products (title, attributes, images) and
shoppers' queries (text, an image, or both) into one {config.get("embedding_dim", "")}-dimensional unit vector
each{f" (Matryoshka prefixes {', '.join(map(str, dims))})" if dims else ""}, for product search, same-product
matching and zero-shot classification. MOON3 implements [MOON3.0: Reasoning-aware Multimodal Representation
Learning for E-commerce Product Understanding]({PAPER_URL}): a Qwen-VL-family model that can reason about
fine-grained attributes before it embeds at an `<emb>` token, with multi-head modality fusion and fine-grained
residual enhancement (FIRE).

## Usage

The model code ships with the weights: load with `trust_remote_code=True`.

```python
from transformers import AutoModel, AutoProcessor

processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)
model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True).eval()
products = [{{"title": "Turtle Check Men Navy Blue Shirt", "attributes": {{"baseColour": "Navy Blue"}}, "images": ["shirt.jpg"]}}]
queries = ["men navy blue casual shirts", {{"text": "red shoes", "image": "photo.jpg"}}]
doc_embeddings = model.encode(products, processor, kind="document")
query_embeddings = model.encode(queries, processor, kind="query")
scores = query_embeddings @ doc_embeddings.T                      # cosine: the vectors are unit length
vectors, reasoning = model.encode(queries, processor, kind="query", mode="reason", return_reasoning=True)
```

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{repo_id}", trust_remote_code=True)
doc_embeddings = model.encode_document([{{"title": "Turtle Check Men Navy Blue Shirt", "images": ["shirt.jpg"]}}])
query_embeddings = model.encode_query(["men navy blue casual shirts", "photo.jpg"])
print(model.similarity(query_embeddings, doc_embeddings))
```

Images are paths, PIL images or bytes; a product is `{{"title", "attributes", "images", "description"}}` (any of
them). Direct mode (default) is one forward pass; reason mode (`mode="reason"`) first generates up to
`config.max_reasoning_tokens` tokens of reasoning and embeds after it.

## Benchmarks

Zero-shot, on the fixed test split of [Fashion Product Images (Small)](https://huggingface.co/datasets/{FASHION_DATASET})
and on Abt-Buy (electronics, text only; Köpcke, Thor and Rahm 2010): nDCG@10 for retrieval, accuracy for the label tasks
(a photo or title against the class names).

{benchmark_table(reference)}

## Limits

- This is a small research checkpoint: it exists to run and measure the MOON3 method end to end. It is well above
  chance on every retrieval task and above BM25 on the fashion attribute queries, but below BM25 on the other text
  tasks and below all-MiniLM-L6-v2 on every text task, and on several zero-shot label tasks it is at or below
  chance; do not use it as a production retrieval model.
- Its tokenizer and training data are an English fashion catalogue: other domains (Abt-Buy electronics) and
  languages are weak.
- Its greedy reasoning is well formed and, from a title or a product record, names the attributes mostly right; from a
  photo alone it names the article type right for about 40 % of items. Reason mode scores below direct mode on most
  tasks.
- Loading needs `trust_remote_code=True` (transformers >= 5.24, < 6; sentence-transformers >= 6.2, < 7).

## Citation

MOON3.0: Reasoning-aware Multimodal Representation Learning for E-commerce Product Understanding,
arXiv:2604.00513 ({PAPER_URL}).
"""
