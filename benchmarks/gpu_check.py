"""GPU check: real training steps of both stages on a GPU, bf16, flash or sdpa attention; tokens/s and MFU printed.

    python -m benchmarks.gpu_check                                   # random Qwen3-VL-2B shapes, LoRA, sdpa
    python -m benchmarks.gpu_check --attn flash_attention_2          # needs `pip install flash-attn`
    python -m benchmarks.gpu_check --model moon3-2b --full           # a real MOON3 checkpoint, full fine-tuning
    python -m benchmarks.gpu_check --size tiny --device cpu --steps 1 --warmup 0   # smoke test of this script on a CPU

Never run on a GPU by this project (no GPU on its machines; the CPU smoke test above is what ran): the figures it
prints are the user's to report.

Per stage: `--warmup` steps, then `--steps` timed optimizer steps (the device is synchronised at each step's begin
and end), of the real trainers:
- stage 1, `Moon3ContrastiveTrainer`: `--rows` rows (image and text queries, products with photos) -> InfoNCE + SFT;
- stage 2, `Moon3GRPOTrainer`: `--rows` queries x `--generations` completions of up to `--completion-length`
  tokens (generation, rank reward, GRPO + InfoNCE loss, backward).
Precision: `--full` trains float32 master weights under bf16 autocast; the default LoRA run keeps a frozen bfloat16
base with float32 adapters and MOON3 modules, under bf16 autocast.

Tokens/s counts the tokens of every sequence a step trains on (attention-mask ones; stage 2: prompts + completions
from TRL's `num_tokens`). MFU = (FLOPs per step) / (step time x peak bf16 FLOP/s), with the usual dense estimate:
training 6 N per token for full fine-tuning, 4 N with LoRA (no weight gradients for the frozen base), plus for stage
2 the generation at 2 N per prompt and completion token; N = the parameters, the tied embedding table once (as the
LM head's matmul). Attention's own FLOPs and stage 2's candidate embedding are left out, so MFU is a lower bound.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: its imports would not resolve, and no script edits sys.path
    raise SystemExit(
        "Run benchmarks/gpu_check.py as a module from the repo root: `python -m benchmarks.gpu_check ...`."
    )

from transformers import TrainerCallback

# Dense bf16 peak TFLOP/s by device-name fragment (vendor datasheets, without sparsity).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="MOON3 checkpoint folder (default: random Qwen3-VL-2B shapes)")
    parser.add_argument("--size", choices=["2b", "tiny"], default="2b", help="random model size (tiny: smoke test)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke test only)")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "flash_attention_2", "eager"], help="attention")
    parser.add_argument("--full", action="store_true", help="full fine-tuning (default: LoRA r 16)")
    parser.add_argument("--rows", type=int, default=8, help="rows per stage-1 step, queries per stage-2 step")
    parser.add_argument("--generations", type=int, default=4, help="stage-2 completions per query")
    parser.add_argument("--completion-length", type=int, default=64, help="stage-2 max completion tokens")
    parser.add_argument("--image-side", type=int, default=448, help="photo side in pixels (448 = 196 visual tokens)")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per stage")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device bf16 peak (default: by device name)")
    return parser


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step, with the device synchronised at its begin and end."""

    def __init__(self, device: str):
        self.device = device
        self.times: list[float] = []
        self._start = 0.0

    def _sync(self):
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.times.append(time.perf_counter() - self._start)


class TokenCountingCollator:
    """Wraps the stage-1 collator and counts the attention-mask ones of every chunk it builds."""

    def __init__(self, collator):
        self.collator = collator
        self.tokens: list[int] = []

    def __call__(self, rows):
        batch = self.collator(rows)
        self.tokens.append(sum(int(chunk["attention_mask"].sum()) for chunk in batch["chunks"]))
        return batch


def random_model(size: str, side: int, attn: str):
    from benchmarks.full_size_check import CORPUS, build, qwen3_vl_2b_config
    from train.build_tokenizer import train_tokenizer

    tokenizer = train_tokenizer(CORPUS, vocab_size=400)
    config = qwen3_vl_2b_config(tokenizer)
    if size == "tiny":
        config.text_config.update(
            {
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "head_dim": 16,
                "intermediate_size": 128,
                "vocab_size": 2000,
            }
        )
        config.text_config.rope_parameters["mrope_section"] = [4, 2, 2]
        config.vision_config.update(
            {
                "depth": 2,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_heads": 2,
                "out_hidden_size": 64,
                "deepstack_visual_indexes": [0],
            }
        )
    model, processor = build(config, tokenizer, side)
    model.backbone.set_attn_implementation(attn)
    return model, processor


def flops_parameters(model) -> int:
    """N of the 6N rule: every parameter once. The tied embedding table is counted once, as the LM head's matmul
    (its lookup at the input is not one)."""
    return sum(p.numel() for p in model.parameters())


def report(stage: str, times: list[float], tokens: list[int], flops_per_step: list[float], peak_tflops):
    timed = times[-len(tokens) :] if tokens else times
    seconds = sum(timed)
    total_tokens = sum(tokens)
    line = f"{stage}: {len(timed)} steps, {seconds / max(len(timed), 1):.3f} s/step, {total_tokens / seconds:,.0f} tokens/s"
    if peak_tflops:
        mfu = sum(flops_per_step) / seconds / (peak_tflops * 1e12)
        line += f", {sum(flops_per_step) / seconds / 1e12:.1f} TFLOP/s, MFU {100 * mfu:.1f}% of {peak_tflops:g}"
    else:
        line += f", {sum(flops_per_step) / seconds / 1e12:.3f} TFLOP/s (MFU: pass --peak-tflops)"
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from datasets import Dataset
    from trl import ModelConfig

    from benchmarks.full_size_check import training_rows
    from train.config import Moon3ContrastiveConfig, Moon3GRPOConfig
    from train.contrastive_trainer import Moon3ContrastiveTrainer
    from train.data import Moon3PairCollator, to_grpo_dataset
    from train.lora import apply_lora
    from train.losses import Moon3InfoNCELoss
    from train.trainer import Moon3GRPOTrainer

    on_cpu = args.device == "cpu"
    if not on_cpu and not torch.cuda.is_available():
        raise SystemExit("No CUDA device: run on a GPU machine, or pass --device cpu for the smoke test.")
    peak = args.peak_tflops
    if peak is None and not on_cpu:
        name = torch.cuda.get_device_name()
        peak = next((value for key, value in PEAK_BF16_TFLOPS.items() if key in name), None)
        print(f"device: {name}; bf16 peak {peak} TFLOP/s", flush=True)
    if args.model:
        from train.build_checkpoint import load_for_training

        dtype = "float32" if args.full else "bfloat16"
        model, processor = load_for_training(args.model, dtype=dtype, attn_implementation=args.attn)
    else:
        model, processor = random_model(args.size, args.image_side, args.attn)
        if args.full:
            model = model.float()  # float32 master weights; bf16 autocast in the trainers
    model = model.to("cpu" if on_cpu else "cuda")
    n = flops_parameters(model)
    train_factor = 6 if args.full else 4
    if not args.full:
        model = apply_lora(
            model, ModelConfig(use_peft=True, lora_r=16, lora_alpha=32, lora_dropout=0.0, dtype="bfloat16")
        )
    print(
        f"N = {n / 1e9:.3f} B, {'full fine-tuning' if args.full else 'LoRA r 16'}, attention {args.attn}", flush=True
    )
    work = Path(tempfile.mkdtemp(prefix="moon3-gpu-check-"))
    rows = [dict(row) for _ in range(max(1, args.rows // 2)) for row in training_rows(work, args.image_side)]
    common = dict(use_cpu=on_cpu, bf16=True, logging_steps=1, save_strategy="no", report_to="none", seed=0)
    total_steps = args.warmup + args.steps

    collator = TokenCountingCollator(Moon3PairCollator(processor))
    timer = StepTimer(args.device)
    stage1 = Moon3ContrastiveTrainer(
        model=model,
        args=Moon3ContrastiveConfig(
            output_dir=str(work / "s1"),
            max_steps=total_steps,
            per_device_train_batch_size=len(rows),
            learning_rate=1e-5,
            gradient_checkpointing=True,
            **common,
        ),
        train_dataset=Dataset.from_list(rows * total_steps),
        data_collator=collator,
        processing_class=processor,
        loss_fn=Moon3InfoNCELoss(),
        callbacks=[timer],
    )
    stage1.train()
    tokens = collator.tokens[args.warmup : total_steps]
    report("stage 1", timer.times[args.warmup :], tokens, [train_factor * n * t for t in tokens], peak)

    timer = StepTimer(args.device)
    stage2 = Moon3GRPOTrainer(
        model=model,
        args=Moon3GRPOConfig(
            output_dir=str(work / "s2"),
            max_steps=total_steps,
            per_device_train_batch_size=len(rows) * args.generations,
            num_generations=args.generations,
            max_completion_length=args.completion_length,
            learning_rate=1e-6,
            gradient_checkpointing=True,
            target_reasoning_tokens=args.completion_length,
            **common,
        ),
        train_dataset=to_grpo_dataset(Dataset.from_list(rows * total_steps), processor),
        processing_class=processor,
        callbacks=[timer],
    )
    stage2.train()
    cumulative = [0] + [int(float(e["num_tokens"])) for e in stage2.state.log_history if "num_tokens" in e]
    tokens = [b - a for a, b in zip(cumulative, cumulative[1:], strict=False)][args.warmup : total_steps]
    report("stage 2", timer.times[args.warmup :], tokens, [(2 + train_factor) * n * t for t in tokens], peak)
    if not on_cpu:
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
