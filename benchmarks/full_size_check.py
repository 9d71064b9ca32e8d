"""Full-size check on a CPU: MOON3 with Qwen3-VL-2B-Instruct's exact shapes, random weights, bfloat16, end to end.

    python -m benchmarks.full_size_check                       # about 4.3 GB of weights; needs ~16 GB RAM, 10 GB disk
    python -m benchmarks.full_size_check --out runs/full-size  # keep the saved checkpoint and the results JSON

Phases, each timed and with its peak resident memory (sampled every 2 ms):
1. build: the Qwen3-VL-2B backbone (text: hidden 2048, 28 layers, 16 heads, 8 KV heads, head_dim 128, intermediate
   6144, vocabulary 151,936, tied embeddings, M-RoPE [24, 20, 20] interleaved; vision: depth 24, hidden 1024, 16
   heads, patch 16, spatial merge 2, out 2048, deepstack [5, 11, 17]) random-initialised in bfloat16, wrapped by
   `train.build_checkpoint.wrap_backbone` (MOON3 on the meta device around it: one copy of the weights);
2. save: `save_checkpoint` (weights, processor, code, sentence-transformers files);
3. load: `Moon3Model.from_pretrained(folder, dtype=bfloat16)`, compared tensor by tensor with what was saved;
4. encode: products and queries (text, photo, both) in direct mode and in reason mode (a few reasoning tokens);
5. stage 1: one `Moon3ContrastiveTrainer` step with LoRA (`train.lora.apply_lora`, r 16) under bf16 autocast:
   InfoNCE + SFT on two rows (an image query and a text query, products with photos);
6. stage 2: one `Moon3GRPOTrainer` step with LoRA under bf16 autocast on an image query and a text query, two
   completions each.

What is not the real model: the weights are random and the tokenizer is a small BPE trained here (special-token ids
differ from Qwen's 151655 etc.; the vocabulary rows are Qwen's 151,936), so generated text is meaningless. Shapes,
dtypes, memory and the code path are the real ones. Not part of the test suite (minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: its imports would not resolve, and no script edits sys.path
    raise SystemExit(
        "Run benchmarks/full_size_check.py as a module from the repo root: `python -m benchmarks.full_size_check ...`."
    )

logger = logging.getLogger(__name__)

QWEN3_VL_2B_TEXT = {
    "hidden_size": 2048,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 6144,
    "vocab_size": 151_936,
    "max_position_embeddings": 262_144,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 5_000_000.0,
        "mrope_section": [24, 20, 20],
        "mrope_interleaved": True,
    },
}
QWEN3_VL_2B_VISION = {
    "depth": 24,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_heads": 16,
    "patch_size": 16,
    "temporal_patch_size": 2,
    "spatial_merge_size": 2,
    "out_hidden_size": 2048,
    "deepstack_visual_indexes": [5, 11, 17],
    "num_position_embeddings": 2304,
}
CORPUS = [
    "Turtle Check Men Navy Blue Shirt",
    "Nike Women Red Running Shoes",
    "audience: Men; type: Shirts; colour: Navy Blue; usage: Casual.",
    "men navy blue casual shirts women red running shoes",
] * 20


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out", type=Path, default=None, help="keep the checkpoint and results.json here (default: temp)"
    )
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank of both training steps")
    parser.add_argument(
        "--reasoning-tokens", type=int, default=4, help="reason-mode budget and stage-2 completion length"
    )
    parser.add_argument("--image-side", type=int, default=128, help="photo side in pixels (128 = 16 visual tokens)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    return parser


def qwen3_vl_2b_config(tokenizer):
    from transformers import AutoConfig

    from train.build_checkpoint import special_token_ids

    ids = special_token_ids(tokenizer)
    text = {**QWEN3_VL_2B_TEXT, "pad_token_id": ids["pad_token_id"]}
    tokens = {k: ids[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    return AutoConfig.for_model(
        "qwen3_vl", text_config=text, vision_config=QWEN3_VL_2B_VISION, tie_word_embeddings=True, **tokens
    )


class Phases:
    """Times and peak resident memory of named phases; prints one line per phase."""

    def __init__(self):
        self.rows: list[dict] = []

    def run(self, name: str, function, *args, **kwargs):
        from benchmarks.peak_memory_grpo import PeakRSS

        gc.collect()
        with PeakRSS() as rss:
            started = time.perf_counter()
            result = function(*args, **kwargs)
            seconds = time.perf_counter() - started
        row = {
            "phase": name,
            "seconds": seconds,
            "rss_before_gib": rss.start / 2**30,
            "peak_rss_gib": rss.peak / 2**30,
        }
        self.rows.append(row)
        print(
            f"phase {name:<28} {seconds:8.1f} s   peak RSS {row['peak_rss_gib']:6.2f} GiB "
            f"(before {row['rss_before_gib']:5.2f} GiB)",
            flush=True,
        )
        return result


def photos(side: int) -> list:
    from PIL import Image

    return [Image.new("RGB", (side, side), colour) for colour in ((200, 20, 20), (20, 20, 200))]


def training_rows(folder: Path, side: int) -> list[dict]:
    """Two rows: an image query and a text query; both products have a photo."""
    paths = []
    for index, image in enumerate(photos(side)):
        path = folder / f"photo-{index}.png"
        image.save(path)
        paths.append(str(path))
    products = [
        {"id": "p0", "title": "Nike Women Red Running Shoes", "attributes": {"colour": "Red"}, "images": [paths[0]]},
        {"id": "p1", "title": "Turtle Men Navy Shirt", "attributes": {"colour": "Navy Blue"}, "images": [paths[1]]},
    ]
    return [
        {"query": {"image": paths[0]}, "positive": products[0], "reasoning": "colour: Red."},
        {"query": {"text": "men navy blue shirts"}, "positive": products[1], "reasoning": "colour: Navy Blue."},
    ]


def build(config, tokenizer, side: int):
    import torch
    from transformers import AutoModelForImageTextToText

    from moon3.processing_moon3 import Moon3Processor
    from train.build_checkpoint import build_image_processor, moon3_config, wrap_backbone

    torch.manual_seed(0)
    vlm = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    model = wrap_backbone(vlm, moon3_config(vlm.config, tokenizer, max_reasoning_tokens=4))
    processor = Moon3Processor(
        image_processor=build_image_processor("qwen3_vl", min_pixels=side * side // 4, max_pixels=side * side),
        tokenizer=tokenizer,
        product_instruction=model.config.product_instruction,
        query_instruction=model.config.query_instruction,
    )
    return model.eval(), processor


def load_and_compare(folder: Path, reference: dict):
    import torch

    from moon3.modeling_moon3 import Moon3Model

    model = Moon3Model.from_pretrained(folder, dtype=torch.bfloat16).eval()
    state = model.state_dict()
    mismatched = [name for name, tensor in reference.items() if not torch.equal(state[name], tensor)]
    if mismatched:
        raise RuntimeError(f"loaded weights differ from the saved ones: {mismatched[:5]}")
    return model


def encode_all(model, processor, side: int, reasoning_tokens: int) -> dict:
    red, blue = photos(side)
    products = [{"title": "Nike Women Red Running Shoes", "attributes": {"colour": "Red"}, "images": [red]}]
    queries = ["men navy blue shirts", blue, {"text": "red shoes", "image": red}]
    out = {}
    for mode in ("direct", "reason"):
        model.config.max_reasoning_tokens = reasoning_tokens
        docs = model.encode(products, processor, kind="document", mode=mode)
        query_embeddings = model.encode(queries, processor, kind="query", mode=mode)
        if not (docs.isfinite().all() and query_embeddings.isfinite().all()):
            raise RuntimeError(f"non-finite embeddings in {mode} mode")
        out[mode] = list(query_embeddings.shape)
    return out


def lora_args(rank: int):
    from trl import ModelConfig

    return ModelConfig(use_peft=True, lora_r=rank, lora_alpha=2 * rank, lora_dropout=0.0, dtype="bfloat16")


def stage1_step(peft_model, processor, rows, work: Path) -> dict:
    from datasets import Dataset

    from train.config import Moon3ContrastiveConfig
    from train.contrastive_trainer import Moon3ContrastiveTrainer
    from train.data import Moon3PairCollator
    from train.losses import Moon3InfoNCELoss

    model = peft_model.get_base_model()
    args = Moon3ContrastiveConfig(
        output_dir=str(work / "stage1"),
        use_cpu=True,
        bf16=True,
        max_steps=1,
        per_device_train_batch_size=len(rows),
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        sft_weight=0.1,
        seed=0,
    )
    trainer = Moon3ContrastiveTrainer(
        model=peft_model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        data_collator=Moon3PairCollator(processor),
        processing_class=processor,
        loss_fn=Moon3InfoNCELoss(matryoshka_dims=model.config.matryoshka_dims),
    )
    trainer.train()
    logged = trainer.state.log_history[0]
    return {key: logged[key] for key in ("loss", "contrastive/loss", "sft/loss") if key in logged}


def stage2_step(peft_model, processor, rows, work: Path, completion_length: int) -> dict:
    from datasets import Dataset

    from train.config import Moon3GRPOConfig
    from train.data import to_grpo_dataset
    from train.trainer import Moon3GRPOTrainer

    args = Moon3GRPOConfig(
        output_dir=str(work / "stage2"),
        use_cpu=True,
        bf16=True,
        gradient_checkpointing=False,
        max_steps=1,
        per_device_train_batch_size=2 * len(rows),
        num_generations=2,
        max_completion_length=completion_length,
        learning_rate=1e-5,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        target_reasoning_tokens=completion_length,
    )
    trainer = Moon3GRPOTrainer(
        model=peft_model,
        args=args,
        train_dataset=to_grpo_dataset(Dataset.from_list(rows), processor),
        processing_class=processor,
    )
    trainer.train()
    logged = trainer.state.log_history[0]
    return {key: logged[key] for key in ("loss", "grpo/loss", "contrastive/loss", "reward") if key in logged}


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    import torch

    from train.build_checkpoint import save_checkpoint
    from train.build_tokenizer import train_tokenizer
    from train.lora import apply_lora

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs", flush=True)
    holder = tempfile.TemporaryDirectory(prefix="moon3-full-size-") if args.out is None else None
    work = Path(holder.name) if holder else args.out
    work.mkdir(parents=True, exist_ok=True)
    phases = Phases()
    tokenizer = train_tokenizer(CORPUS, vocab_size=400)
    config = qwen3_vl_2b_config(tokenizer)
    model, processor = phases.run("build (random bf16 + wrap)", build, config, tokenizer, args.image_side)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"parameters: {parameters / 1e9:.4f} B ({parameters * 2 / 2**30:.2f} GiB in bfloat16)", flush=True)
    checkpoint = work / "checkpoint"
    phases.run("save", save_checkpoint, model, processor, checkpoint)
    reference = {
        name: tensor.clone() for name, tensor in model.state_dict().items() if "fusion" in name or "fire" in name
    }
    last = len(model.decoder_layers) - 1
    reference[f"backbone.model.language_model.layers.{last}.mlp.down_proj.weight"] = model.decoder_layers[
        last
    ].mlp.down_proj.weight.clone()
    del model
    gc.collect()
    model = phases.run("load", load_and_compare, checkpoint, reference)
    del reference
    shapes = phases.run(
        "encode (direct + reason)", encode_all, model, processor, args.image_side, args.reasoning_tokens
    )
    rows = training_rows(work, args.image_side)
    peft_model = phases.run("LoRA wrap", apply_lora, model, lora_args(args.lora_r))
    stage1 = phases.run("stage 1 step (LoRA, bf16 autocast)", stage1_step, peft_model, processor, rows, work)
    stage2 = phases.run(
        "stage 2 step (LoRA, bf16 autocast)", stage2_step, peft_model, processor, rows, work, args.reasoning_tokens
    )
    results = {
        "parameters": parameters,
        "phases": phases.rows,
        "encode_shapes": shapes,
        "stage1": stage1,
        "stage2": stage2,
    }
    print(json.dumps({"stage1": stage1, "stage2": stage2}))
    if args.out is not None:
        from benchmarks.io_utils import atomic_write_json

        atomic_write_json(args.out / "results.json", results)
    if holder:
        holder.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
