"""What both training stages (train/cold_start.py, train/grpo_contrastive.py) do around their trainer: read the
training rows, build or load the model and processor, and save a checkpoint folder that loads on its own.

    >>> rows = load_rows(script_args); model, processor = build_model(script_args, model_args, rows)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path


def load_rows(script_args):
    """The training rows as a `datasets.Dataset` (validated files, or the synthetic catalogue)."""
    from datasets import Dataset

    from train.data import load_pairs, synthetic_rows

    if script_args.synthetic_rows > 0:
        return Dataset.from_list(synthetic_rows(script_args.synthetic_rows, seed=0))
    return load_pairs([path.strip() for path in script_args.dataset_name.split(",")])


def training_texts(dataset, limit: int = 2000) -> list[str]:
    """Query and product texts to train a random model's tokenizer on."""
    from train.data import clean_item

    texts = []
    for row in dataset.select(range(min(limit, len(dataset)))):
        query = clean_item(row["query"])
        texts.append(query if isinstance(query, str) else query.get("text", ""))
        positive = clean_item(row["positive"])
        texts.append(
            positive.get("title", "") + " " + " ".join(f"{k}: {v}" for k, v in positive.get("attributes", {}).items())
        )
        if row.get("reasoning"):
            texts.append(row["reasoning"])
    return [text for text in texts if text]


def build_model(script_args, model_args, dataset):
    from train.build_checkpoint import load_for_training
    from train.config import RANDOM_MODEL_SIZES

    sizes = RANDOM_MODEL_SIZES[script_args.random_model] if script_args.random_model else None
    model, processor = load_for_training(
        model_args.model_name_or_path,
        random_model_sizes=sizes,
        family=script_args.random_model_family,
        tokenizer_texts=training_texts(dataset) if sizes else None,
        dtype=model_args.dtype,
        **(
            {"embedding_dim": 32, "matryoshka_dims": [8, 16, 32], "max_reasoning_tokens": 8}
            if script_args.random_model == "tiny"
            else {}
        ),
    )
    if script_args.freeze_vision_tower:
        model.backbone.model.visual.requires_grad_(False)
    return model, processor


def save_loadable(trainer, processor, output_dir: str) -> None:
    """Save the trained model as a complete checkpoint folder: weights, processor, the three code files (so that
    `AutoModel.from_pretrained(folder, trust_remote_code=True)` works) and the sentence-transformers files."""
    from train.build_checkpoint import register_auto_classes
    from train.write_st_files import write_st_files

    register_auto_classes()  # save_pretrained then copies configuration/modeling/processing_moon3.py
    trainer.save_model(output_dir)
    if trainer.accelerator.is_main_process:
        write_st_files(Path(output_dir), processor.product_instruction, processor.query_instruction)
