"""Speed of one GRPO + contrastive step (Moon3GRPOTrainer) against one plain GRPOTrainer step, same model and batch.

    python benchmarks/speed_grpo.py --size tiny --steps 6

Both trainers start from the same random MOON3 (same seed, same synthetic rows, same generation settings); the plain
one gets the format and length rewards only (the retrieval reward needs Moon3GRPOTrainer's ranking) and MOON3's
log-prob head (TRL's own fused head cannot run a MOON3 model). The step time is TRL's `step_time` metric; the table
gives the median over the steps after the first (warm-up).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=["tiny", "mini"], help="random MOON3 size")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per trainer (the first is warm-up)")
    parser.add_argument("--batch-size", type=int, default=8, help="completions per step")
    parser.add_argument("--num-generations", type=int, default=4, help="G completions per query")
    parser.add_argument("--max-completion-length", type=int, default=16, help="reasoning tokens generated at most")
    parser.add_argument("--output-dir", default="/tmp/moon3-speed-grpo", help="scratch folder for the trainers")
    return parser


def step_times(trainer) -> list[float]:
    trainer.train()
    return [entry["step_time"] for entry in trainer.state.log_history if "step_time" in entry][1:]


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = make_parser().parse_args(argv)
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from train.build_checkpoint import load_for_training
    from train.cold_start import training_texts
    from train.config import RANDOM_MODEL_SIZES, Moon3GRPOConfig
    from train.data import synthetic_rows, to_grpo_dataset
    from train.rewards import make_format_reward, make_length_reward
    from train.trainer import Moon3GRPOTrainer, install_fused_policy_head

    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = Dataset.from_list(synthetic_rows(64))
    model, processor = load_for_training(None, RANDOM_MODEL_SIZES[args.size], tokenizer_texts=training_texts(rows),
                                         embedding_dim=32 if args.size == "tiny" else 256,
                                         matryoshka_dims=[8, 16, 32] if args.size == "tiny" else [64, 128, 256])
    dataset = to_grpo_dataset(rows, processor)
    common = dict(use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none", save_strategy="no",
                  per_device_train_batch_size=args.batch_size, num_generations=args.num_generations,
                  max_completion_length=args.max_completion_length, max_steps=args.steps, logging_steps=1, seed=0,
                  shuffle_dataset=False)
    config = model.config
    plain_model = copy.deepcopy(model)
    plain_model.generation_config.eos_token_id = config.emb_token_id
    plain = GRPOTrainer(model=plain_model, processing_class=processor, train_dataset=dataset,
                        reward_funcs=[make_format_reward(config.think_end_token_id, config.emb_token_id),
                                      make_length_reward(config.think_end_token_id, 8)],
                        args=GRPOConfig(output_dir=f"{args.output_dir}/plain", **common))
    install_fused_policy_head(plain.model)
    moon3 = Moon3GRPOTrainer(model=copy.deepcopy(model), processing_class=processor, train_dataset=dataset,
                             args=Moon3GRPOConfig(output_dir=f"{args.output_dir}/moon3", **common))
    plain_times, moon3_times = step_times(plain), step_times(moon3)
    result = {"plain_s": statistics.median(plain_times), "moon3_s": statistics.median(moon3_times)}
    result["ratio"] = result["moon3_s"] / result["plain_s"]
    print(f"\n| trainer ({args.size}, {args.batch_size} completions, <= {args.max_completion_length} tokens) | median step (s) |")
    print("|---|---|")
    print(f"| plain GRPOTrainer | {result['plain_s']:.3f} |")
    print(f"| Moon3GRPOTrainer (GRPO + contrastive) | {result['moon3_s']:.3f} |")
    print(f"| ratio | {result['ratio']:.2f}x |")
    return result


if __name__ == "__main__":
    main()
