"""Train a byte-level BPE tokenizer for MOON3 with the Qwen-VL special tokens and MOON3's own.

    python -m train.build_tokenizer --data ../shared/data/fashion-product-images --vocab-size 8000 --out tok/

No tokenizer can be downloaded here, so the shipped checkpoint and the tests train their own.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterable
from pathlib import Path

from moon3 import processing_moon3

# Order matters: ids 0..N-1 go to these, so `<|endoftext|>` (the pad token) is always id 0. The processor's list
# (which it also escapes in user text) is the one source.
SPECIAL_TOKENS = list(processing_moon3.DEFAULT_ADDED_TOKENS)
MOON3_TOKENS = {"think": "<think>", "think_end": "</think>", "emb": "<emb>"}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8000):
    """Train a byte-level BPE on `texts` and wrap it as a `PreTrainedTokenizerFast` with MOON3's special tokens.

    Example:
        >>> tokenizer = train_tokenizer(["Navy blue shirt", "Red dress"], vocab_size=300)
        >>> tokenizer.convert_tokens_to_ids("<emb>") > 0
        True
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ValueError(f"vocab_size must be >= 300 (256 bytes + special tokens), got {vocab_size}.")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(PreTrainedTokenizerFast(tokenizer_object=backend))


def wrap_tokenizer(tokenizer):
    """Give any tokenizer MOON3's special tokens and pad/eos settings (adds the missing ones)."""
    missing = [token for token in SPECIAL_TOKENS if token not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    tokenizer.pad_token = tokenizer.pad_token or "<|endoftext|>"
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.padding_side = "left"
    return tokenizer


def catalogue_texts(data_dir: Path, split: str = "train") -> list[str]:
    """The text MOON3 reads about the fashion catalogue's `split` rows (products.csv, plus catalog_44k.csv rows of the
    same split when present), written the way the processor writes it: the product text (`Title: ...` and
    `Attributes: ...`), the reasoning target (`audience: Men; type: Shirts; ...`), and the fixed prompt text (the
    two instructions and the chat roles) once per product, as often as the model reads it. Without the prompt text
    a catalogue-only BPE splits the instructions into ~80 tokens per sequence; with it they take ~25."""
    from moon3 import processing_moon3
    from train.fashion import FASHION_REASONING_FIELD_NAMES

    # format_product_text needs neither a tokenizer nor an image processor: use it without building them.
    processor = processing_moon3.Moon3Processor.__new__(processing_moon3.Moon3Processor)
    prompt_texts = [
        processing_moon3.DEFAULT_PRODUCT_INSTRUCTION,
        processing_moon3.DEFAULT_QUERY_INSTRUCTION,
        "system",
        "user",
        "assistant",
    ]
    texts = []
    for name in ("products.csv", "catalog_44k.csv"):
        path = Path(data_dir) / name
        if not path.is_file():
            continue
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if row.get("split", split) != split:
                    continue
                names = FASHION_REASONING_FIELD_NAMES
                attributes = {key: row[key] for key in names if row.get(key, "").strip()}
                title = row.get("productDisplayName", "").strip()
                if title or attributes:
                    texts.append(processor.format_product_text({"title": title, "attributes": attributes}))
                    texts.append(processor.format_reasoning(attributes, FASHION_REASONING_FIELD_NAMES))
                texts.extend(prompt_texts)
    if not texts:
        raise ValueError(f"No catalogue text found under {data_dir} (expected products.csv).")
    return texts


def make_parser() -> argparse.ArgumentParser:
    from train.data import at_least

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="fashion catalogue folder (has products.csv)")
    parser.add_argument(
        "--vocab-size", type=at_least(1), default=8000, help="BPE vocabulary size, special tokens included"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to save the tokenizer to")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    tokenizer = train_tokenizer(catalogue_texts(args.data), vocab_size=args.vocab_size)
    tokenizer.save_pretrained(args.out)
    print(f"saved a {len(tokenizer)}-token tokenizer to {args.out}")


if __name__ == "__main__":
    main()
