"""What both training stages (train/cold_start.py, train/grpo_contrastive.py) do around their trainer: read the
training rows, build or load the model and processor, and save a checkpoint folder that loads on its own.

    >>> rows = load_rows(script_args); model, processor = build_model(script_args, model_args, rows)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path


def load_rows(script_args):
    """(records, rejects): the training rows as `RowRecord`s, files validated row by row (schema, keys, types), or the
    synthetic catalogue. Bad rows stop here naming file, row and field, unless `--skip_bad_rows` (see `check_rows`)."""
    from train.data import RowRecord, read_records, report_rejects, synthetic_rows, validate_row

    if script_args.synthetic_rows > 0:
        rows = synthetic_rows(script_args.synthetic_rows, seed=0)
        return [RowRecord(f"synthetic row {i}", validate_row(row, i, "synthetic")) for i, row in enumerate(rows)], []
    paths = [path.strip() for path in script_args.dataset_name.split(",") if path.strip()]
    records, rejects = read_records(paths, skip_bad_rows=script_args.skip_bad_rows)
    if not records:
        report_rejects(rejects, None, 0)  # raises: nothing left to train on
    return records, rejects


def check_rows(records, processor, script_args, output_dir: str, rejects=()):
    """Before the first step: build every row with the model's processor as training will (images opened, keys and
    types checked). Returns the `datasets.Dataset` to train on; writes `<output_dir>/rejected_rows.jsonl` when rows
    were skipped."""
    import os

    from train.data import check_records, records_to_dataset, report_rejects

    records, more = check_records(records, processor, skip_bad_rows=script_args.skip_bad_rows)
    rejects = list(rejects) + more
    is_main = int(os.environ.get("RANK", "0")) == 0
    report_rejects(rejects, Path(output_dir) / "rejected_rows.jsonl" if is_main else None, len(records))
    return records_to_dataset(records)


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


def check_precision(model_args, training_args) -> None:
    """Refuse weight dtypes that would train badly: AdamW updates of ~1e-5 round away on bfloat16 weights.

    Mixed precision as intended: full fine-tuning loads float32 weights (`dtype: float32`, the master copy) and runs
    under bf16 autocast (`bf16: true`); LoRA may keep the frozen base in bfloat16 (its trainable parameters are float32,
    `train/lora.py`), which then needs the autocast."""
    low = model_args.dtype in ("bfloat16", "float16")
    if low and not model_args.use_peft:
        raise ValueError(
            f"dtype {model_args.dtype} with full fine-tuning would train {model_args.dtype} weights, whose small "
            "AdamW updates round away. Load dtype: float32 (the master weights) with bf16: true (bf16 autocast), "
            "or train LoRA (--use_peft), which keeps a frozen bfloat16 base."
        )
    if low and training_args is not None and not (training_args.bf16 or training_args.fp16):
        raise ValueError(
            f"--use_peft over a {model_args.dtype} base needs autocast (bf16: true): the adapters and MOON3's modules "
            "train in float32 and meet the frozen base's layers inside autocast."
        )


def build_model(script_args, model_args, dataset, training_args=None):
    """(model, processor) for a run: loaded or random, with the attention implementation asked for, LoRA-wrapped
    under `--use_peft` (`train/lora.py`)."""
    from train.build_checkpoint import load_for_training
    from train.config import RANDOM_MODEL_SIZES
    from train.lora import apply_lora, check_lora_arguments

    check_lora_arguments(model_args)
    check_precision(model_args, training_args)
    sizes = RANDOM_MODEL_SIZES[script_args.random_model] if script_args.random_model else None
    model, processor = load_for_training(
        model_args.model_name_or_path,
        random_model_sizes=sizes,
        family=script_args.random_model_family,
        tokenizer_texts=training_texts(dataset) if sizes else None,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
        revision=model_args.model_revision,
        **(
            {"embedding_dim": 32, "matryoshka_dims": [8, 16, 32], "max_reasoning_tokens": 8}
            if script_args.random_model == "tiny"
            else {}
        ),
    )
    if script_args.freeze_vision_tower:
        model.backbone.model.visual.requires_grad_(False)
    if model_args.use_peft:
        model = apply_lora(model, model_args)
    return model, processor


def save_loadable(trainer, processor, output_dir: str, base_checkpoint: str | None = None) -> None:
    """Save the trained model as a complete checkpoint folder: weights, processor, the three code files (so that
    `AutoModel.from_pretrained(folder, trust_remote_code=True)` works) and the sentence-transformers files.

    A LoRA run saves the merged model there and the adapter in `output_dir/adapter` (`train.lora.save_lora_run`);
    `base_checkpoint` is the checkpoint it started from (None for a random start)."""
    from accelerate.utils import is_peft_model

    from train.build_checkpoint import register_auto_classes
    from train.write_st_files import write_st_files

    if is_peft_model(trainer.accelerator.unwrap_model(trainer.model)):
        from train.lora import save_lora_run

        save_lora_run(trainer, processor, output_dir, base_checkpoint)
        return
    register_auto_classes()  # save_pretrained then copies configuration/modeling/processing_moon3.py
    trainer.save_model(output_dir)
    if trainer.accelerator.is_main_process:
        write_st_files(Path(output_dir), processor.product_instruction, processor.query_instruction)
