"""Is MOON3's reasoning right, and does its vector depend on it? Measured on the fashion test split.

    python -m benchmarks.convert_fashion --out runs/data/fashion
    python -m benchmarks.reasoning_quality --model . --data runs/data/fashion --out runs/reasoning/moon3-mini
    python -m benchmarks.reasoning_quality --model . --data runs/data/fashion --out runs/reasoning/quick --limit 50

Every product of the split is shown four ways: its photo, its title and its photo + title as shopper queries, and
the product itself (the full record, on the document side, as the catalogue embeds it; its attributes are in the
prompt, so there the attribute accuracy measures copying).

Quality. For each item the model completes its reason-mode prompt (`...<think>`) greedily, stopping at `<emb>` as
stage 2 does, with at most `--max-new-tokens` tokens (default: the config's `max_reasoning_tokens` + 2 for
`</think><emb>`). Reported per kind:
- the share of well-formed completions, `reasoning </think><emb>` exactly as stage 2's format reward
  (`train.rewards.make_format_reward`) scores 1.0;
- the accuracy of each attribute the reasoning states (gender, colour, article type, usage, season) against the
  catalogue's gold value, read with the field names of the stage-1 reasoning targets
  (`train.fashion.FASHION_REASONING_FIELD_NAMES`, e.g. `audience: Men; ...; colour: Navy Blue; ...`); a missing attribute
  counts as wrong; values compare case-insensitively, whitespace collapsed. The majority-class rate stands beside;
- the mean reasoning length in tokens (before `</think>`, or the whole completion when it never closes).

Sensitivity. Each item is embedded teacher-forced (`prompt<think>REASONING</think><emb>`, one forward) after
(a) its own reasoning, (b) another item's reasoning (a random other item of the same kind whose reasoning differs),
(c) its own reasoning with the colour value swapped for another catalogue colour (one with at least 10 products in
the gallery, so that a full top 10 of it exists). Reported: mean cosine (a, b) and (a, c), and the share of items
whose top 10 among the gallery (every test product in the full `product` view, direct mode, the item's own product
left out) holds more products of the swapped-in colour under (c) than under (a). It runs twice: after the model's
greedy reasoning (`generated`; (c) only for items whose reasoning states a colour) and after the stage-1 reasoning
target written from the catalogue's attributes (`gold`), which separates "the reasoning is wrong" from "the vector
ignores the reasoning".

Writes results.json, results.md and completions.jsonl (every item's completion and parse) into --out, atomically,
after everything has run. The checkpoint's own model code is run (`trust_remote_code=True`): this tool is for
MOON3 checkpoints only.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

logger = logging.getLogger(__name__)

# Catalogue field -> its name in the reasoning comes from the processor; these five are the ones scored.
SCORED_ATTRIBUTES = ("gender", "baseColour", "articleType", "usage", "season")
KINDS = ("photo", "title", "photo+title", "product")
SOURCES = ("generated", "gold")
TOP_K = 10
MIN_SWAP_COLOUR_PRODUCTS = 10


# --------------------------------------------------------------------------- pure functions (tested on hand cases)


def reasoning_field_names() -> dict[str, str]:
    """Catalogue field -> reasoning field name, as the stage-1 reasoning targets write them."""
    from train.fashion import FASHION_REASONING_FIELD_NAMES

    return dict(FASHION_REASONING_FIELD_NAMES)


def parse_reasoning(text: str, field_names: dict[str, str] | None = None) -> dict[str, str]:
    """Catalogue field -> stated value, read from reasoning written like `"audience: Men; colour: Navy Blue."`.

    Parts are separated by `;`, each `name: value`; the final `.` is dropped. A part without `:` or with an unknown
    name is ignored; when a field is stated twice the first statement counts.

    Example:
        >>> parse_reasoning("audience: Men; type: Shirts; colour: Navy Blue.")
        {'gender': 'Men', 'articleType': 'Shirts', 'baseColour': 'Navy Blue'}
    """
    from train.rewards import parse_stated_fields

    by_name = {name: field for field, name in (field_names or reasoning_field_names()).items()}
    stated: dict[str, str] = {}
    for name, value in parse_stated_fields(text).items():
        field = by_name.get(name)
        if field is not None and field not in stated:
            stated[field] = value
    return stated


def same_value(stated: str | None, gold: str) -> bool:
    """Whether a stated value names the gold one (case-insensitive, whitespace collapsed)."""
    from train.rewards import same_value as _same_value

    return _same_value(stated, gold)


def attribute_hits(stated: dict[str, str], gold: dict[str, str]) -> dict[str, bool]:
    """Scored attribute -> whether the reasoning states the gold value; attributes without a gold value are left
    out (they cannot be scored), a gold attribute the reasoning does not state is a miss."""
    return {name: same_value(stated.get(name), gold[name]) for name in SCORED_ATTRIBUTES if gold.get(name)}


def majority_rates(golds: Sequence[dict[str, str]]) -> dict[str, dict]:
    """Scored attribute -> {value, rate}: the most common gold value and its share among items that have one."""
    rates = {}
    for name in SCORED_ATTRIBUTES:
        values = Counter(gold[name] for gold in golds if gold.get(name))
        if values:
            value, count = values.most_common(1)[0]
            rates[name] = {"value": value, "rate": count / sum(values.values())}
    return rates


def trim_completion(ids: Sequence[int], emb_token_id: int, pad_token_id: int) -> list[int]:
    """A generated continuation cut after its first `<emb>` (generation pads finished rows after it)."""
    ids = list(ids)
    if emb_token_id in ids:
        return ids[: ids.index(emb_token_id) + 1]
    return ids


def reasoning_token_ids(completion: Sequence[int], think_end_token_id: int, emb_token_id: int) -> list[int]:
    """The reasoning part of a completion: tokens before the first `</think>` (all of them, minus a final `<emb>`,
    when it never closes)."""
    ids = list(completion)
    if think_end_token_id in ids:
        return ids[: ids.index(think_end_token_id)]
    return ids[:-1] if ids and ids[-1] == emb_token_id else ids


def swap_colour(text: str, new_colour: str, field_names: dict[str, str] | None = None) -> str | None:
    """`text` with the value of its first colour statement replaced by `new_colour`; None when it states none.

    Example:
        >>> swap_colour("audience: Men; colour: Navy Blue; usage: Casual.", "Red")
        'audience: Men; colour: Red; usage: Casual.'
    """
    colour_name = (field_names or reasoning_field_names())["baseColour"]
    parts = text.split(";")
    for index, part in enumerate(parts):
        name, colon, value = part.partition(":")
        if colon and name.strip() == colour_name:
            trailing_dot = "." if value.rstrip().endswith(".") and index == len(parts) - 1 else ""
            parts[index] = f"{name}: {new_colour}{trailing_dot}"
            return ";".join(parts)
    return None


def pick_other(index: int, texts: Sequence[str], rng: random.Random) -> int | None:
    """A random index other than `index` whose text differs from `texts[index]` (None when there is none)."""
    candidates = [j for j, text in enumerate(texts) if j != index and text != texts[index]]
    return rng.choice(candidates) if candidates else None


def pick_colour(current: str | None, colours: Sequence[str], rng: random.Random) -> str:
    """A random colour of `colours` other than `current` (compared like stated values)."""
    choices = [colour for colour in colours if not same_value(current, colour)]
    if not choices:
        raise ValueError(f"no catalogue colour other than {current!r} to swap in; the gallery needs two colours.")
    return rng.choice(choices)


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


# --------------------------------------------------------------------------- items of the split


def gold_attributes(product: dict) -> dict[str, str]:
    """A benchmark product's catalogue attributes, with its category path as masterCategory / subCategory."""
    gold = dict(product.get("attributes", {}))
    category = product.get("category", [])
    for level, name in enumerate(("masterCategory", "subCategory")):
        if len(category) > level and name not in gold:
            gold[name] = category[level]
    return gold


def gold_reasoning(gold: dict[str, str], layout: str = "scored") -> str:
    """The stage-1 reasoning target of a product in `layout` (`train.fashion.REASONING_LAYOUTS`)."""
    from train.data import FASHION_ATTRIBUTES
    from train.fashion import fashion_reasoning_target

    return fashion_reasoning_target({key: gold[key] for key in FASHION_ATTRIBUTES if gold.get(key)}, layout)


def items_of_kind(products: Sequence[dict], kind: str, root: Path) -> tuple[str, list]:
    """(processor side, items) for one kind: queries for photo/title/photo+title, products for `product`."""
    from .data_format import product_view

    if kind == "product":
        return "document", [product_view(p, "product", root) for p in products]
    items = []
    for product in products:
        image = product_view(product, "image", root)["image"] if product.get("images") else None
        if kind == "title":
            items.append(product["title"])
        elif image is None:
            raise ValueError(
                f"product {product['id']!r} has no image, so it has no {kind!r} query; pick another split."
            )
        else:
            items.append({"image": image} if kind == "photo" else {"text": product["title"], "image": image})
    return "query", items


# --------------------------------------------------------------------------- model calls


def _processor_inputs(processor, side: str, items: list, mode: str):
    return processor(**{"products" if side == "document" else "queries": items}, mode=mode)


def _to_model(batch, model):
    batch = batch.to(model.device)
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
    return batch


def generate_completions(
    model, processor, side: str, items: list, max_new_tokens: int, batch_size: int, progress: Callable
) -> list[list[int]]:
    """Greedy completions of the reason-mode prompts, stopping at `<emb>` (as in stage 2), trimmed after it."""
    import torch

    config = model.config
    completions = []
    for start in progress(range(0, len(items), batch_size)):
        batch = _to_model(_processor_inputs(processor, side, items[start : start + batch_size], "reason"), model)
        with torch.no_grad():
            sequences = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                eos_token_id=config.emb_token_id,
                pad_token_id=config.pad_token_id,
                do_sample=False,
            )
        for row in sequences[:, batch["input_ids"].shape[1] :].tolist():
            completions.append(trim_completion(row, config.emb_token_id, config.pad_token_id))
    return completions


def embed_after_reasoning(
    model,
    processor,
    side: str,
    items: list,
    reasonings: Sequence[str],
    batch_size: int,
    progress: Callable,
    token_hits: list | None = None,
):
    """Tensor[N, E]: each item embedded at `<emb>` after the GIVEN reasoning text, teacher-forced in one forward.

    The sequence is `reason-mode prompt + reasoning + "</think><emb>"`, tokenised exactly as stage 1 builds its
    SFT sequences (`train.data.Moon3PairCollator`), so the vector is the one the model would give had it
    generated that reasoning. With `token_hits` (a list), the same forward also scores the model's next-token
    predictions over everything after `<think>` (the tokens stage 1's SFT loss is taken on): one list of
    `(target token id, argmax right?, negative log-likelihood)` per item is appended.
    """
    import torch

    if len(items) != len(reasonings):
        raise ValueError(f"got {len(items)} items but {len(reasonings)} reasonings; give one reasoning per item.")
    vectors = []
    for start in progress(range(0, len(items), batch_size)):
        chunk = items[start : start + batch_size]
        texts, images = processor.render(chunk, kind=side, mode="reason")
        texts = [
            text + reasoning + "</think><emb>" for text, reasoning in zip(texts, reasonings[start:], strict=False)
        ]
        batch = _to_model(
            processor(text=texts, images=images or None, padding=True, padding_side="left", return_tensors="pt"), model
        )
        with torch.no_grad():
            outputs = model(**batch, return_embeddings=True, logits_to_keep=0 if token_hits is not None else None)
        vectors.append(outputs.embeddings.float().cpu())
        if token_hits is not None:
            token_hits.extend(_next_token_hits(outputs.logits, batch["input_ids"], model.config.think_token_id))
    return torch.cat(vectors) if vectors else torch.zeros(0, model.config.embedding_dim)


def _next_token_hits(logits, input_ids, think_token_id: int) -> list[list[tuple[int, bool, float]]]:
    """Per row: (target, argmax == target, -log p(target)) for every token after the row's last `<think>`."""
    import torch

    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, L - 1, V): prediction of token t + 1
    targets = input_ids[:, 1:]  # (B, L - 1)
    right = log_probs.argmax(dim=-1) == targets  # (B, L - 1)
    nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, L - 1)
    rows = []
    for row in range(input_ids.shape[0]):
        think_at = int((input_ids[row] == think_token_id).nonzero().max())
        span = range(think_at, input_ids.shape[1] - 1)
        rows.append([(int(targets[row, t]), bool(right[row, t]), float(nll[row, t])) for t in span])
    return rows


def teacher_forced_summary(token_hits: Sequence[list], tokenizer, config) -> dict:
    """Next-token accuracy on the stage-1 targets, per token class, and the mean NLL (the SFT loss on this split).

    Classes: field names (`audience`, ` colour`, ...), separators (`:`, `;`, `.`), `</think>`, `<emb>`, values
    (the rest). `exact` is the share of items whose every target token is the model's argmax.
    """
    names = set()
    for name in reasoning_field_names().values():
        for text in (name, " " + name):
            names.update(tokenizer(text, add_special_tokens=False)["input_ids"])
    separators = {tokenizer.convert_tokens_to_ids(token) for token in (":", ";", ".")}

    def token_class(token_id: int) -> str:
        if token_id == config.think_end_token_id:
            return "</think>"
        if token_id == config.emb_token_id:
            return "<emb>"
        return "separator" if token_id in separators else "field name" if token_id in names else "value"

    by_class: dict[str, list[bool]] = {}
    for hits in token_hits:
        for token_id, right, _ in hits:
            by_class.setdefault(token_class(token_id), []).append(right)
    all_nll = [nll for hits in token_hits for _, _, nll in hits]
    return {
        "accuracy": {name: mean([float(right) for right in values]) for name, values in sorted(by_class.items())},
        "tokens": {name: len(values) for name, values in sorted(by_class.items())},
        "mean_nll": mean(all_nll),
        "exact": mean([float(all(right for _, right, _ in hits)) for hits in token_hits]),
    }


# --------------------------------------------------------------------------- the two measures


def quality_of_kind(completions, golds, processor, config) -> tuple[dict, list[dict]]:
    """Format share, attribute accuracies and reasoning length of one kind; plus one record per item."""
    from train.rewards import make_format_reward, reasoning_lengths

    format_reward = make_format_reward(config.think_end_token_id, config.emb_token_id)
    rewards = format_reward(completion_ids=completions)
    lengths = reasoning_lengths(completions, config.think_end_token_id)
    field_names = reasoning_field_names()
    records, hits = [], {name: [] for name in SCORED_ATTRIBUTES}
    for completion, gold, reward, length in zip(completions, golds, rewards, lengths, strict=True):
        ids = reasoning_token_ids(completion, config.think_end_token_id, config.emb_token_id)
        text = processor.tokenizer.decode(ids, skip_special_tokens=True).strip()
        stated = parse_reasoning(text, field_names)
        item_hits = attribute_hits(stated, gold)
        for name, hit in item_hits.items():
            hits[name].append(hit)
        records.append(
            {
                "completion": processor.tokenizer.decode(completion, skip_special_tokens=False),
                "reasoning": text,
                "well_formed": reward == 1.0,
                "format_reward": reward,
                "reasoning_tokens": length,
                "stated": stated,
                "hits": item_hits,
            }
        )
    summary = {
        "n": len(completions),
        "well_formed": mean([float(r == 1.0) for r in rewards]),
        "closes_think": mean([float(config.think_end_token_id in ids) for ids in completions]),
        "format_reward_mean": mean(rewards),
        "mean_reasoning_tokens": mean(lengths),
        "accuracy": {name: mean([float(h) for h in values]) for name, values in hits.items()},
        "stated": {name: mean([float(name in record["stated"]) for record in records]) for name in SCORED_ATTRIBUTES},
    }
    return summary, records


def topk_colour_counts(query_vectors, gallery_vectors, gallery_colours, own_index, colours, k: int = TOP_K):
    """For each query i: how many of its top `k` gallery products (its own product `own_index[i]` left out) have
    colour `colours[i]`. Ties go to the lower gallery index."""
    import torch

    scores = query_vectors @ gallery_vectors.T  # (Q, N)
    rows = torch.arange(scores.shape[0])
    scores[rows, torch.as_tensor(own_index)] = float("-inf")
    k = min(k, max(scores.shape[1] - 1, 0))
    top = torch.topk(scores, k, dim=1).indices.tolist()  # (Q, k)
    return [sum(same_value(gallery_colours[j], colour) for j in row) for row, colour in zip(top, colours, strict=True)]


def sensitivity(
    embed: Callable,
    reasonings: Sequence[str],
    gallery_vectors,
    gallery_colours,
    swap_colours,
    seed: int,
    own_vectors=None,
) -> dict:
    """Cosines (a, b), (a, c) and the share of items whose top 10 gains swapped-in-colour products under (c).

    `embed(indices, texts)` embeds items `indices` after `texts` (Tensor[len, E], unit length). Item i's own
    product is gallery row i. `own_vectors` (Tensor[Q, E]) are the vectors after each item's own reasoning when
    they were already computed.
    """
    field_names = reasoning_field_names()
    rng = random.Random(seed)
    count = len(reasonings)
    own = embed(list(range(count)), list(reasonings)) if own_vectors is None else own_vectors  # (Q, E)
    others = [pick_other(i, reasonings, rng) for i in range(count)]
    with_other = [i for i, j in enumerate(others) if j is not None]
    cos_other = []
    if with_other:
        other_vectors = embed(with_other, [reasonings[others[i]] for i in with_other])
        cos_other = (own[with_other] * other_vectors).sum(dim=1).tolist()

    swapped_in, swapped_texts, swappable = [], [], []
    for i, text in enumerate(reasonings):
        colour = pick_colour(parse_reasoning(text, field_names).get("baseColour"), swap_colours, rng)
        new_text = swap_colour(text, colour, field_names)
        if new_text is not None:
            swappable.append(i)
            swapped_texts.append(new_text)
            swapped_in.append(colour)
    result = {
        "n": count,
        "n_other": len(with_other),
        "cos_own_other": mean(cos_other),
        "n_swapped": len(swappable),
        "cos_own_swapped": None,
        "swapped_colour_rises": None,
        "swapped_colour_in_top10_own": None,
        "swapped_colour_in_top10_swapped": None,
    }
    if not swappable:
        return result
    swapped_vectors = embed(swappable, swapped_texts)
    result["cos_own_swapped"] = mean((own[swappable] * swapped_vectors).sum(dim=1).tolist())
    before = topk_colour_counts(own[swappable], gallery_vectors, gallery_colours, swappable, swapped_in)
    after = topk_colour_counts(swapped_vectors, gallery_vectors, gallery_colours, swappable, swapped_in)
    result["swapped_colour_rises"] = mean([float(b > a) for a, b in zip(before, after, strict=True)])
    result["swapped_colour_in_top10_own"] = mean(before)
    result["swapped_colour_in_top10_swapped"] = mean(after)
    return result


# --------------------------------------------------------------------------- report


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_report(results: dict) -> str:
    """The results as Markdown tables: quality per kind (with majority rates), then sensitivity per source."""
    quality, majority = results["quality"], results["majority"]
    names = {"gender": "gender", "baseColour": "colour", "articleType": "article type", "usage": "usage",
             "season": "season"}  # fmt: skip
    lines = [
        f"# Reasoning quality: {results['model']['id']} on {results['data']['name']}",
        "",
        f"`{results['command']}` ({results['settings']['items_per_kind']} products per kind, greedy, at most "
        f"{results['settings']['max_new_tokens']} new tokens, stop at `<emb>`)",
        "",
        "| kind | n | well formed | holds `</think>` | mean reasoning tokens | "
        + " | ".join(f"{names[a]} acc (majority)" for a in SCORED_ATTRIBUTES)
        + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(SCORED_ATTRIBUTES),
    ]
    for kind, row in quality.items():
        cells = [
            f"{_fmt(row['accuracy'].get(a))} ({_fmt(majority.get(a, {}).get('rate'))})" for a in SCORED_ATTRIBUTES
        ]
        lines.append(
            f"| {kind} | {row['n']} | {_fmt(row['well_formed'])} | {_fmt(row['closes_think'])} | "
            f"{_fmt(row['mean_reasoning_tokens'], 1)} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "Sensitivity: cosine between the vector after the item's own reasoning (a) and after another item's (b), or",
        "after its own with the colour swapped (c); 'rises' = share of items whose top 10 holds more products of",
        "the swapped-in colour under (c) than under (a).",
        "",
        "| reasoning | kind | n | cos(a, b) | n swapped | cos(a, c) | rises | swapped colour in top 10: (a) → (c) |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for source, per_kind in results["sensitivity"].items():
        for kind, row in per_kind.items():
            lines.append(
                f"| {source} | {kind} | {row['n']} | {_fmt(row['cos_own_other'])} | {row['n_swapped']} | "
                f"{_fmt(row['cos_own_swapped'])} | {_fmt(row['swapped_colour_rises'])} | "
                f"{_fmt(row['swapped_colour_in_top10_own'], 2)} → {_fmt(row['swapped_colour_in_top10_swapped'], 2)} |"
            )
    lines += [
        "",
        "Teacher-forced on the stage-1 reasoning target (`prompt<think>target</think><emb>`): next-token accuracy",
        "per token class, mean NLL over the target (the SFT loss on this split), share of items all right.",
        "",
        "| kind | field name | separator | value | `</think>` | `<emb>` | mean NLL | all right |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, row in results.get("teacher_forced", {}).items():
        accuracy = row["accuracy"]
        cells = [_fmt(accuracy.get(name)) for name in ("field name", "separator", "value", "</think>", "<emb>")]
        lines.append(f"| {kind} | " + " | ".join(cells) + f" | {_fmt(row['mean_nll'], 2)} | {_fmt(row['exact'])} |")
    lines += ["", "Greedy reasoning, first items of each kind:", ""]
    for kind, examples in results["examples"].items():
        for example in examples:
            lines.append(f"- {kind}: `{example}`")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- entry point


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a MOON3 checkpoint folder or Hub id (e.g. . for the root)")
    parser.add_argument("--data", required=True, type=Path, help="a fashion folder from benchmarks.convert_fashion")
    parser.add_argument("--out", required=True, type=Path, help="output folder (results.json, results.md, ...)")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N products of the split (0 = all)")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="item kinds to measure")
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="generation budget (default: max_reasoning_tokens + 2)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="items per generation / forward batch")
    parser.add_argument("--seed", type=int, default=0, help="seed for the other-item and swapped-colour draws")
    parser.add_argument(
        "--reasoning-layout",
        default="scored",
        choices=("scored", "base-rate-first", "usage-first", "full", "catalogue"),
        help="layout of the gold reasoning the `gold` sensitivity rows and the teacher-forced table use: the one the "
        "model was trained on (train.data build-fashion --reasoning-layout; catalogue for checkpoints before it)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def load_moon3(model_id: str, device: str):
    """(model in eval mode, processor) of a MOON3 checkpoint, with its own code."""
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(model_id, trust_remote_code=True).to(device).eval()
    processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=True)
    if getattr(model.config, "model_type", None) != "moon3" or not hasattr(processor, "render"):
        raise ValueError(f"--model {model_id!r} is not a MOON3 checkpoint (config model_type must be 'moon3').")
    return model, processor


def evaluate(
    model,
    processor,
    data,
    kinds=KINDS,
    limit=0,
    max_new_tokens=None,
    batch_size=32,
    seed=0,
    progress=True,
    reasoning_layout="scored",
):
    """Run both measures on a loaded `BenchData`; returns (results without run metadata, completion records)."""
    from tqdm.auto import tqdm

    def bar(desc):
        return lambda iterable: tqdm(iterable, desc=desc, disable=not progress, leave=False)

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}.")
    if limit < 0:
        raise ValueError(f"--limit must be >= 0 (0 = all), got {limit}.")
    config = model.config
    budget = config.max_reasoning_tokens + 2 if max_new_tokens is None else max_new_tokens
    if budget < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {budget}.")
    products = data.products[:limit] if limit else list(data.products)
    if len(products) < 2:
        raise ValueError(f"{data.root} gives {len(products)} products; the measures need at least 2.")
    golds = [gold_attributes(p) for p in products]
    gallery_colours = [gold.get("baseColour") for gold in golds]
    colour_counts = Counter(c for c in gallery_colours if c)
    swap_colours = sorted(c for c, n in colour_counts.items() if n >= MIN_SWAP_COLOUR_PRODUCTS) or sorted(
        colour_counts
    )
    _, gallery_items = items_of_kind(products, "product", data.root)
    gallery = embed_direct(model, processor, gallery_items, batch_size, bar("gallery (direct)"))

    quality, sensitivity_rows, examples, records = {}, {source: {} for source in SOURCES}, {}, []
    teacher_forced = {}
    for kind in kinds:
        side, items = items_of_kind(products, kind, data.root)
        completions = generate_completions(model, processor, side, items, budget, batch_size, bar(f"{kind}: generate"))
        quality[kind], kind_records = quality_of_kind(completions, golds, processor, config)
        examples[kind] = [record["reasoning"] for record in kind_records[:3]]
        for product, record in zip(products, kind_records, strict=True):
            records.append({"kind": kind, "product_id": product["id"], **record})
        texts = {
            "generated": [r["reasoning"] for r in kind_records],
            "gold": [gold_reasoning(g, reasoning_layout) for g in golds],
        }
        for source in SOURCES:

            def embed(indices, reasonings, side=side, items=items, source=source, kind=kind, token_hits=None):
                chosen = [items[i] for i in indices]
                desc = f"{kind}: embed after {source}"
                return embed_after_reasoning(
                    model, processor, side, chosen, reasonings, batch_size, bar(desc), token_hits
                )

            own_vectors = None
            if source == "gold":  # the pass after the gold target also scores the model's next-token predictions
                token_hits = []
                own_vectors = embed(list(range(len(items))), texts["gold"], token_hits=token_hits)
                teacher_forced[kind] = teacher_forced_summary(token_hits, processor.tokenizer, config)
            sensitivity_rows[source][kind] = sensitivity(
                embed, texts[source], gallery, gallery_colours, swap_colours, seed, own_vectors
            )
        logger.info(
            "%s: well formed %.3f, colour accuracy %s", kind, quality[kind]["well_formed"],
            _fmt(quality[kind]["accuracy"].get("baseColour")),
        )  # fmt: skip
    results = {
        "quality": quality,
        "majority": majority_rates(golds),
        "sensitivity": sensitivity_rows,
        "teacher_forced": teacher_forced,
        "examples": examples,
        "settings": {
            "items_per_kind": len(products),
            "kinds": list(kinds),
            "max_new_tokens": budget,
            "batch_size": batch_size,
            "seed": seed,
            "swap_colours": swap_colours,
            "top_k": TOP_K,
        },
    }
    return results, records


def embed_direct(model, processor, products: list, batch_size: int, progress: Callable):
    """Tensor[N, E]: products embedded in direct mode (the gallery)."""
    import torch

    vectors = []
    for start in progress(range(0, len(products), batch_size)):
        batch = _to_model(
            _processor_inputs(processor, "document", products[start : start + batch_size], "direct"), model
        )
        with torch.no_grad():
            vectors.append(model(**batch, return_embeddings=True).embeddings.float().cpu())
    return torch.cat(vectors)


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from .data_format import load_bench_data
    from .io_utils import atomic_write_json, atomic_write_jsonl, atomic_write_text
    from .run import library_versions

    torch.manual_seed(args.seed)
    started = time.perf_counter()
    data = load_bench_data(args.data)
    model, processor = load_moon3(args.model, args.device)
    results, records = evaluate(
        model,
        processor,
        data,
        kinds=args.kinds,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.no_progress,
        reasoning_layout=args.reasoning_layout,
    )
    results.update(
        {
            "model": {"id": args.model, "path": str(getattr(model, "name_or_path", args.model))},
            "data": {"name": data.name, "path": str(data.root), "hash": data.hash},
            "versions": library_versions(),
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": "python -m benchmarks.reasoning_quality " + " ".join(sys.argv[1:] if argv is None else argv),
            "timings": {"total_s": round(time.perf_counter() - started, 1)},
        }
    )
    markdown = markdown_report(results)
    atomic_write_jsonl(args.out / "completions.jsonl", records)
    atomic_write_text(args.out / "results.md", markdown)
    atomic_write_json(args.out / "results.json", results)
    print(markdown)
    logger.info("wrote %s", args.out / "results.json")
    return results


if __name__ == "__main__":
    main()
