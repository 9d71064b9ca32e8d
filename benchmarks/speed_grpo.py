"""Speed of one GRPO + contrastive step (Moon3GRPOTrainer) against one plain GRPOTrainer step, same model and batch.

    python -m benchmarks.speed_grpo --size tiny --steps 12

Both trainers start from the same random MOON3 (same seed, same synthetic rows, same generation settings); the plain
one gets the format and length rewards only (the retrieval reward needs Moon3GRPOTrainer's ranking) and MOON3's
log-prob head (TRL's own fused head cannot run a MOON3 model).

The two trainers run in the same process and take turns, one optimizer step each (plain, MOON3, plain, ...), so that
load from other processes on a shared machine hits both sides alike. A step is timed from the trainer's
`on_step_begin` to its `on_step_end` (generation, rewards, loss, backward and optimizer step), in wall-clock and in
process CPU seconds. The table gives medians over the steps after the first (warm-up); the ratio is the median of
the per-pair ratios (each MOON3 step over the plain step just before it). A second table splits MOON3's extra work
by phase (median seconds per step).
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import threading
import time
from collections import defaultdict

if __package__ in (None, ""):  # run as a file: its imports would not resolve, and no script edits sys.path
    raise SystemExit(
        "Run benchmarks/speed_grpo.py as a module from the repo root: `python -m benchmarks.speed_grpo ...`."
    )

from transformers import PrinterCallback, TrainerCallback

# Methods whose time is reported per step (those a trainer lacks are skipped).
PHASES = ("_generate_and_score_completions", "_generate", "_calculate_rewards", "_embed_candidates", "compute_loss")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=["tiny", "mini"], help="random MOON3 size")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per trainer (the first is warm-up)")
    parser.add_argument("--batch-size", type=int, default=8, help="completions per step")
    parser.add_argument("--num-generations", type=int, default=4, help="G completions per query")
    parser.add_argument("--max-completion-length", type=int, default=16, help="reasoning tokens generated at most")
    parser.add_argument("--output-dir", default="/tmp/moon3-speed-grpo", help="scratch folder for the trainers")
    return parser


class TakeTurns(TrainerCallback):
    """Wait for this trainer's turn before each step, time the step (and its phases), then hand over the turn."""

    def __init__(self, trainer, mine: threading.Event, other: threading.Event):
        self.mine, self.other = mine, other
        self.steps: list[dict[str, float]] = []
        self.phases: dict[str, float] = defaultdict(float)
        for name in PHASES:
            if hasattr(trainer, name):
                setattr(trainer, name, self._timed(name, getattr(trainer, name)))

    def _timed(self, name, method):
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.phases[name] += time.perf_counter() - start

        return wrapper

    def on_step_begin(self, args, state, control, **kwargs):
        self.mine.wait()
        self.mine.clear()
        self.phases.clear()
        self._start = (time.perf_counter(), time.process_time())

    def on_step_end(self, args, state, control, **kwargs):
        wall, cpu = time.perf_counter() - self._start[0], time.process_time() - self._start[1]
        rest = wall - self.phases["_generate_and_score_completions"] - self.phases["compute_loss"]
        self.steps.append({"wall": wall, "cpu": cpu, **self.phases, "backward + optimizer (rest)": rest})
        self.other.set()

    def on_train_end(self, args, state, control, **kwargs):
        self.other.set()  # never leave the other trainer waiting


def run_in_turns(first, second) -> tuple[list[dict], list[dict]]:
    """Train both trainers, alternating single steps (first, second, first, ...). Returns each one's step records."""
    import torch

    events = threading.Event(), threading.Event()
    turns = TakeTurns(first, events[0], events[1]), TakeTurns(second, events[1], events[0])
    errors = []
    for trainer, callback in zip((first, second), turns, strict=True):
        trainer.add_callback(callback)
        trainer.remove_callback(PrinterCallback)  # keep the output to the tables

    num_threads = torch.get_num_threads()

    def train(trainer, callback):
        torch.set_num_threads(num_threads)  # a new thread starts with one OpenMP thread; use what the main one has
        try:
            trainer.train()
        except BaseException as error:  # noqa: BLE001 - re-raised in the main thread
            errors.append(error)
            callback.other.set()

    threads = [threading.Thread(target=train, args=pair) for pair in zip((first, second), turns, strict=True)]
    events[0].set()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return turns[0].steps, turns[1].steps


def median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = make_parser().parse_args(argv)
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from train.build_checkpoint import load_for_training
    from train.config import RANDOM_MODEL_SIZES, Moon3GRPOConfig
    from train.data import synthetic_rows, to_grpo_dataset
    from train.rewards import make_format_reward, make_length_reward
    from train.stage_setup import training_texts
    from train.trainer import Moon3GRPOTrainer, install_fused_policy_head

    rows = Dataset.from_list(synthetic_rows(64))
    model, processor = load_for_training(
        None,
        RANDOM_MODEL_SIZES[args.size],
        tokenizer_texts=training_texts(rows),
        embedding_dim=32 if args.size == "tiny" else 256,
        matryoshka_dims=[8, 16, 32] if args.size == "tiny" else [64, 128, 256],
    )
    dataset = to_grpo_dataset(rows, processor)
    common = dict(
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        per_device_train_batch_size=args.batch_size,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        max_steps=args.steps,
        logging_steps=1,
        seed=0,
        shuffle_dataset=False,
        disable_tqdm=True,
    )
    config = model.config
    plain_model = copy.deepcopy(model)
    plain_model.generation_config.eos_token_id = config.emb_token_id
    plain_model.generation_config.pad_token_id = config.pad_token_id
    plain = GRPOTrainer(
        model=plain_model,
        processing_class=processor,
        train_dataset=dataset,
        reward_funcs=[
            make_format_reward(config.think_end_token_id, config.emb_token_id),
            make_length_reward(config.think_end_token_id, 8),
        ],
        args=GRPOConfig(output_dir=f"{args.output_dir}/plain", **common),
    )
    install_fused_policy_head(plain.model)
    moon3 = Moon3GRPOTrainer(
        model=copy.deepcopy(model),
        processing_class=processor,
        train_dataset=dataset,
        args=Moon3GRPOConfig(output_dir=f"{args.output_dir}/moon3", **common),
    )
    plain_steps, moon3_steps = (steps[1:] for steps in run_in_turns(plain, moon3))
    result = {
        "plain_s": median(s["wall"] for s in plain_steps),
        "moon3_s": median(s["wall"] for s in moon3_steps),
        "ratio": median(m["wall"] / p["wall"] for p, m in zip(plain_steps, moon3_steps, strict=True)),
        "plain_cpu_s": median(s["cpu"] for s in plain_steps),
        "moon3_cpu_s": median(s["cpu"] for s in moon3_steps),
        "cpu_ratio": median(m["cpu"] / p["cpu"] for p, m in zip(plain_steps, moon3_steps, strict=True)),
    }
    ratios = sorted(m["wall"] / p["wall"] for p, m in zip(plain_steps, moon3_steps, strict=True))
    print(
        f"\n| {args.size}, {args.batch_size} completions, <= {args.max_completion_length} tokens, "
        f"{len(plain_steps)} timed steps each, {torch.get_num_threads()} threads | wall s/step | CPU s/step |"
    )
    print("|---|---|---|")
    print(f"| plain GRPOTrainer | {result['plain_s']:.3f} | {result['plain_cpu_s']:.3f} |")
    print(f"| Moon3GRPOTrainer (GRPO + contrastive) | {result['moon3_s']:.3f} | {result['moon3_cpu_s']:.3f} |")
    print(f"| ratio (median of per-step pairs) | **{result['ratio']:.2f}×** | {result['cpu_ratio']:.2f}× |")
    print(f"\nper-pair wall ratios, sorted: {' '.join(f'{r:.2f}' for r in ratios)}")
    print("\n| phase (median s/step) | plain | MOON3 |")
    print("|---|---|---|")
    for name in (*PHASES, "backward + optimizer (rest)"):
        cells = [
            f"{median(s[name] for s in steps):.3f}" if steps and name in steps[0] else "-"
            for steps in (plain_steps, moon3_steps)
        ]
        print(f"| `{name}` | {cells[0]} | {cells[1]} |")
    return result


if __name__ == "__main__":
    main()
