"""Stage 1, cold start: InfoNCE between queries and products + a weighted SFT loss on reasoning targets.

Launch (tiny smoke run on one CPU process, then two, then a real backbone on GPUs):

    accelerate launch --config_file train/accelerate/cpu_1proc.yaml -m train.cold_start --config train/recipes/tiny_cold_start.yaml
    accelerate launch --config_file train/accelerate/cpu_2proc.yaml -m train.cold_start --config train/recipes/tiny_cold_start.yaml
    accelerate launch --config_file train/accelerate/multi_gpu.yaml -m train.cold_start --config train/recipes/qwen3_vl_2b_cold_start.yaml

Any config field can be overridden on the command line (`--learning_rate 1e-5`). Queries with a reasoning target
are trained as `prompt<think>reasoning</think><emb>`: one forward gives the SFT loss on the reasoning and the
embedding at `<emb>`. Gradient caching (`--embedding_chunk_size`) keeps memory flat in the contrastive batch size.
"""

from __future__ import annotations

import logging
import sys

if __package__ in (None, ""):  # run as a file: its imports would not resolve, and no script edits sys.path
    raise SystemExit(
        "Run train/cold_start.py as a module from the repo root: `accelerate launch ... -m train.cold_start ...` "
        "(or `python -m train.cold_start ...`)."
    )

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
        script="-m train.cold_start",
        summary="Stage 1, cold start: trains a MOON3 checkpoint with InfoNCE between queries and products plus a weighted SFT loss on reasoning targets.",
        examples=[
            "accelerate launch --config_file train/accelerate/cpu_1proc.yaml -m train.cold_start --config train/recipes/tiny_cold_start.yaml",
        ],
        moon3_classes=[Moon3ScriptArguments, Moon3ContrastiveConfig],
    )


def main(argv: list[str] | None = None) -> None:
    script_args, training_args, model_args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from train.checkpointing import die_with_parent

    die_with_parent()  # `kill -9` of `accelerate launch` stops this process too
    from train.contrastive_trainer import Moon3ContrastiveTrainer
    from train.data import Moon3PairCollator, attribute_classes, records_to_dataset
    from train.losses import Moon3InfoNCELoss
    from train.photo_attributes import PhotoAttributeHead
    from train.stage_setup import build_model, check_rows, load_rows, save_loadable

    records, rejects = load_rows(script_args)
    model, processor = build_model(script_args, model_args, records_to_dataset(records), training_args)
    dataset = check_rows(records, processor, script_args, training_args.output_dir, rejects)
    loss_fn = Moon3InfoNCELoss(
        temperature=training_args.contrastive_temperature,
        matryoshka_dims=training_args.matryoshka_dims or model.config.matryoshka_dims,
        gather_across_devices=training_args.gather_across_devices,
    )
    logger.info("contrastive loss: %s", loss_fn.get_config_dict())
    classes = attribute_head = None
    if training_args.photo_attribute_weight > 0:
        classes = attribute_classes((record.row for record in records), training_args.photo_attribute_fields)
        attribute_head = PhotoAttributeHead(model.config.vlm_config.text_config.hidden_size, classes)
        logger.info("photo attribute head: %s", {name: len(values) for name, values in classes.items()})
    trainer = Moon3ContrastiveTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=Moon3PairCollator(
            processor,
            training_args.embedding_chunk_size,
            training_args.num_hard_negatives,
            reasoned_queries=training_args.reasoned_contrastive_weight > 0,
            reasoning_noise=training_args.reasoning_noise,
            seed=training_args.seed,
            attribute_classes=classes,
        ),
        processing_class=processor,
        loss_fn=loss_fn,
        attribute_head=attribute_head,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    save_loadable(trainer, processor, training_args.output_dir, model_args.model_name_or_path)


if __name__ == "__main__":
    main(sys.argv[1:])
