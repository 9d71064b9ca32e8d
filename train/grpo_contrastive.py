"""Stage 2: GRPO + contrastive (MOON3.0's joint RL and contrastive training), with TRL's GRPOTrainer.

Launch:

    # tiny smoke run from a clean checkout (random tiny MOON3, synthetic catalogue): one CPU process, then two
    accelerate launch --config_file train/accelerate/cpu_1proc.yaml -m train.grpo_contrastive --config train/recipes/tiny_grpo.yaml
    accelerate launch --config_file train/accelerate/cpu_2proc.yaml -m train.grpo_contrastive --config train/recipes/tiny_grpo.yaml
    # a real backbone on GPUs (after stage 1), DeepSpeed ZeRO-2 (not run here: no GPU; see docs/training.md)
    accelerate launch --config_file train/accelerate/zero2.yaml -m train.grpo_contrastive --config train/recipes/qwen3_vl_2b_grpo.yaml

How this departs from textbook GRPO (DeepSeekMath):
- The reward is not a verifier's verdict but how well the reasoning helps the embedding retrieve: each completion
  `reasoning</think><emb>` is embedded at `<emb>` and its positive product is ranked among the batch's candidates
  (products embedded in direct mode by the current model), reward `1 - log(rank)/log(N)`; plus a format reward
  (ends with `</think><emb>`) and a length penalty, weighted by `--retrieval_reward_weight` etc.
- The loss adds `contrastive_weight * InfoNCE` on the completions' embeddings to TRL's GRPO loss. Those embeddings
  come from the same forward pass as the token log-probabilities (MOON3 returns both), so the contrastive term costs
  no extra policy forward; the candidates carry no gradient (they were embedded while scoring). With
  `--direct_contrastive_weight > 0`, stage 1's InfoNCE on the step's queries and products in direct mode (gradient on
  both sides) is added too.
- Generation stops at `<emb>` instead of the tokenizer's end-of-sequence token.
- Everything else (group-normalised advantages, clipping, KL with `--beta`, DeepSpeed) is TRL's, unchanged.
- Rollouts use transformers' `generate` with MOON3's own forward; vLLM and continuous batching are refused
  (they would not sample from the policy being trained, see `train.trainer.check_rollout_engine`).

DDP: text-only data leaves the vision tower out of the step; the recipes set `ddp_find_unused_parameters: true`
(the policy runs exactly one forward per backward, so this is safe), or pass `--freeze_vision_tower`.
"""

from __future__ import annotations

import logging
import sys

if __package__ in (None, ""):  # run as a file: its imports would not resolve, and no script edits sys.path
    raise SystemExit(
        "Run train/grpo_contrastive.py as a module from the repo root: `accelerate launch ... -m train.grpo_contrastive ...` "
        "(or `python -m train.grpo_contrastive ...`)."
    )

logger = logging.getLogger(__name__)


def make_parser():
    from trl import ModelConfig, TrlParser

    from train.config import Moon3GRPOConfig, Moon3ScriptArguments

    return TrlParser((Moon3ScriptArguments, Moon3GRPOConfig, ModelConfig))


def parse_args(argv: list[str] | None = None):
    """(script args, training args, model args); `--help` is short (MOON3 options first), `--help-all` is TRL's."""
    from train.cli import parse_training_args
    from train.config import Moon3GRPOConfig, Moon3ScriptArguments

    return parse_training_args(
        make_parser(),
        argv,
        script="-m train.grpo_contrastive",
        summary="Stage 2: trains a MOON3 checkpoint with TRL's GRPO (retrieval-rank, format and length rewards on the generated reasoning) plus InfoNCE on the completions' embeddings.",
        examples=[
            "accelerate launch --config_file train/accelerate/cpu_1proc.yaml -m train.grpo_contrastive --config train/recipes/tiny_grpo.yaml",
        ],
        moon3_classes=[Moon3ScriptArguments, Moon3GRPOConfig],
    )


def main(argv: list[str] | None = None):
    script_args, training_args, model_args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from train.checkpointing import die_with_parent

    die_with_parent()  # `kill -9` of `accelerate launch` stops this process too
    from train.data import records_to_dataset, to_grpo_dataset
    from train.stage_setup import build_model, check_rows, load_rows, save_loadable
    from train.trainer import Moon3GRPOTrainer

    records, rejects = load_rows(script_args)  # schema checks; then every row built with the processor before step 1
    model, processor = build_model(script_args, model_args, records_to_dataset(records), training_args)
    rows = check_rows(records, processor, script_args, training_args.output_dir, rejects)
    dataset = to_grpo_dataset(rows, processor)
    trainer = Moon3GRPOTrainer(model=model, args=training_args, train_dataset=dataset, processing_class=processor)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    save_loadable(trainer, processor, training_args.output_dir, model_args.model_name_or_path)
    return trainer


if __name__ == "__main__":
    main(sys.argv[1:])
