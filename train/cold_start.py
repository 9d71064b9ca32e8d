"""Stage 1, cold start: InfoNCE between queries and products + a weighted SFT loss on reasoning targets.

Launch (tiny smoke run on one CPU process, then two, then a real backbone on GPUs):

    accelerate launch --config_file train/accelerate/cpu_1proc.yaml train/cold_start.py --config train/recipes/tiny_cold_start.yaml
    accelerate launch --config_file train/accelerate/cpu_2proc.yaml train/cold_start.py --config train/recipes/tiny_cold_start.yaml
    accelerate launch --config_file train/accelerate/multi_gpu.yaml train/cold_start.py --config train/recipes/qwen3_vl_2b_cold_start.yaml

Any config field can be overridden on the command line (`--learning_rate 1e-5`). Queries with a reasoning target
are trained as `prompt<think>reasoning</think><emb>`: one forward gives the SFT loss on the reasoning and the
embedding at `<emb>`. Gradient caching (`--embedding_chunk_size`) keeps memory flat in the contrastive batch size.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (`accelerate launch train/cold_start.py`): make `train` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger(__name__)


def make_parser():
    from trl import ModelConfig, TrlParser

    from train.config import Moon3ContrastiveConfig, Moon3ScriptArguments

    return TrlParser((Moon3ScriptArguments, Moon3ContrastiveConfig, ModelConfig))


def parse_args(argv: list[str] | None = None):
    """(script args, training args, model args); `--help` is short (MOON3 options first), `--help-all` is TRL's."""
    from train.cli import parse_training_args
    from train.config import Moon3ContrastiveConfig, Moon3ScriptArguments

    return parse_training_args(
        make_parser(),
        argv,
        script="train/cold_start.py",
        summary="Stage 1, cold start: trains a MOON3 checkpoint with InfoNCE between queries and products plus a weighted SFT loss on reasoning targets.",
        examples=[
            "accelerate launch --config_file train/accelerate/cpu_1proc.yaml train/cold_start.py --config train/recipes/tiny_cold_start.yaml",
        ],
        moon3_classes=[Moon3ScriptArguments, Moon3ContrastiveConfig],
    )


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


def main(argv: list[str] | None = None) -> None:
    script_args, training_args, model_args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from train.contrastive_trainer import Moon3ContrastiveTrainer
    from train.data import Moon3PairCollator
    from train.losses import Moon3InfoNCELoss

    dataset = load_rows(script_args)
    model, processor = build_model(script_args, model_args, dataset)
    loss_fn = Moon3InfoNCELoss(
        temperature=training_args.contrastive_temperature,
        matryoshka_dims=training_args.matryoshka_dims or model.config.matryoshka_dims,
        gather_across_devices=training_args.gather_across_devices,
    )
    logger.info("contrastive loss: %s", loss_fn.get_config_dict())
    trainer = Moon3ContrastiveTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=Moon3PairCollator(
            processor, training_args.embedding_chunk_size, training_args.num_hard_negatives
        ),
        processing_class=processor,
        loss_fn=loss_fn,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    save_loadable(trainer, processor, training_args.output_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
