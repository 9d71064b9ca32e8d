"""Build a loadable MOON3 checkpoint folder (config, weights, tokenizer, processor, chat template, code).

From a pretrained backbone (a Hub id or a local folder with a Qwen3-VL / Qwen2.5-VL checkpoint):

    python -m train.build_checkpoint --backbone Qwen/Qwen3-VL-2B-Instruct --out moon3-2b

It loads the backbone's weights, adds `<think>`, `</think>` and `<emb>` to its tokenizer (resizing the embeddings)
and initialises the fusion, FIRE and projection modules (zero-initialised, so the fresh model embeds as the
backbone does).

Random-initialised, with a tokenizer trained on a catalogue (what the repo root ships until the trained one):

    python -m train.build_checkpoint --random --tokenizer-data ../shared/data/fashion-product-images --out .
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Patch sizes and normalisation of the two backbone families' image processors.
FAMILY_IMAGE_SETTINGS = {
    "qwen3_vl": {"patch_size": 16, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
    "qwen2_5_vl": {
        "patch_size": 14,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    },
}


def special_token_ids(tokenizer) -> dict[str, int]:
    """Ids of the tokens MOON3's config and backbone need, read from the tokenizer (never hard-coded)."""
    names = {
        "think_token_id": "<think>",
        "think_end_token_id": "</think>",
        "emb_token_id": "<emb>",
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
        "im_start_token_id": "<|im_start|>",
    }
    ids = {key: tokenizer.convert_tokens_to_ids(token) for key, token in names.items()}
    missing = [names[key] for key, value in ids.items() if value is None or value == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"The tokenizer lacks the special tokens {missing}; run it through wrap_tokenizer first.")
    ids["pad_token_id"] = tokenizer.pad_token_id
    return ids


def small_vlm_config(
    tokenizer,
    family: str = "qwen3_vl",
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    vision_hidden_size: int = 128,
    vision_depth: int = 2,
) -> dict[str, Any]:
    """A small Qwen3-VL or Qwen2.5-VL backbone config (as a dict) whose vocabulary is `tokenizer`'s."""
    if family not in FAMILY_IMAGE_SETTINGS:
        raise ValueError(f"family must be one of {list(FAMILY_IMAGE_SETTINGS)}, got {family!r}.")
    ids = special_token_ids(tokenizer)
    head_dim = hidden_size // num_heads
    # M-RoPE splits head_dim/2 rotary frequencies over (time, height, width).
    half = head_dim // 2
    mrope_section = [half - 2 * (half // 3), half // 3, half // 3]
    text = {
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": max(1, num_heads // 2),
        "intermediate_size": hidden_size * 3,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section},
        "pad_token_id": ids["pad_token_id"],
    }
    settings = FAMILY_IMAGE_SETTINGS[family]
    vision = {
        "depth": vision_depth,
        "hidden_size": vision_hidden_size,
        "intermediate_size": vision_hidden_size * 2,
        "num_heads": max(1, vision_hidden_size // 32),
        "out_hidden_size": hidden_size,
        "patch_size": settings["patch_size"],
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    if family == "qwen3_vl":
        text["head_dim"] = head_dim
        vision["deepstack_visual_indexes"] = [0]
        vision["num_position_embeddings"] = 256
    else:
        vision["fullatt_block_indexes"] = [vision_depth - 1]
        vision["window_size"] = 112
    tokens = {
        key: ids[key] for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    }
    return {"model_type": family, "text_config": text, "vision_config": vision, "tie_word_embeddings": True, **tokens}


def build_image_processor(family: str, min_pixels: int = 64 * 64, max_pixels: int = 224 * 224):
    """The backbone family's image processor (PIL backend: no torchvision needed)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    settings = FAMILY_IMAGE_SETTINGS[family]
    return Qwen2VLImageProcessorPil(
        patch_size=settings["patch_size"],
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        image_mean=settings["image_mean"],
        image_std=settings["image_std"],
    )


def moon3_config(vlm_config, tokenizer, **overrides):
    """A `Moon3Config` over `vlm_config` with every special-token id read from `tokenizer`."""
    from moon3.configuration_moon3 import Moon3Config

    ids = special_token_ids(tokenizer)
    keys = (
        "think_token_id",
        "think_end_token_id",
        "emb_token_id",
        "image_token_id",
        "im_start_token_id",
        "pad_token_id",
    )
    return Moon3Config(vlm_config=vlm_config, **{key: ids[key] for key in keys}, **overrides)


def register_auto_classes() -> None:
    """Make `save_pretrained` write `auto_map` entries and copy the three code files."""
    from moon3.configuration_moon3 import Moon3Config
    from moon3.modeling_moon3 import Moon3Model
    from moon3.processing_moon3 import Moon3Processor

    Moon3Config.register_for_auto_class()
    Moon3Model.register_for_auto_class("AutoModel")
    Moon3Processor.register_for_auto_class()


def save_checkpoint(model, processor, out: Path) -> None:
    """Save model + processor (and the sentence-transformers files) into `out` atomically (staged, then moved in)."""
    from train.write_st_files import write_st_files

    register_auto_classes()
    model.config.auto_map = {
        "AutoConfig": "configuration_moon3.Moon3Config",
        "AutoModel": "modeling_moon3.Moon3Model",
        "AutoModelForImageTextToText": "modeling_moon3.Moon3Model",
    }
    model.generation_config.eos_token_id = model.config.think_end_token_id
    model.generation_config.pad_token_id = model.config.pad_token_id
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".build-") as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        # Every checkpoint is also a sentence-transformers model (prompts = this processor's instructions).
        write_st_files(Path(staging), processor.product_instruction, processor.query_instruction)
        for path in Path(staging).iterdir():
            path.chmod(0o644)
            target = out / path.name
            if target.is_dir():
                shutil.rmtree(target)
            path.replace(target)
    logger.info("saved MOON3 checkpoint to %s", out)


def build_random(
    tokenizer,
    family: str = "qwen3_vl",
    seed: int = 0,
    vlm_sizes: dict | None = None,
    max_pixels: int = 224 * 224,
    **config_overrides,
):
    """A random-initialised MOON3 model and its processor (images bounded by `max_pixels`)."""
    import torch

    from moon3.modeling_moon3 import Moon3Model
    from moon3.processing_moon3 import Moon3Processor

    config = moon3_config(
        small_vlm_config(tokenizer, family=family, **(vlm_sizes or {})), tokenizer, **config_overrides
    )
    torch.manual_seed(seed)
    model = Moon3Model(config)
    if not (config.use_fusion and config.use_fire):
        # An ablation must differ from the full model in the switched-off module only. Removing a module shifts the
        # random draws of every module built after it, so build the full model from the same seed and copy its
        # weights: the remaining modules then start bitwise equal to the full model's.
        full_overrides = {**config_overrides, "use_fusion": True, "use_fire": True}
        full_config = moon3_config(config.vlm_config, tokenizer, **full_overrides)
        torch.manual_seed(seed)
        full_state = Moon3Model(full_config).state_dict()
        model.load_state_dict({name: full_state[name] for name in model.state_dict()})
    processor = Moon3Processor(
        image_processor=build_image_processor(family, min_pixels=min(64 * 64, max_pixels), max_pixels=max_pixels),
        tokenizer=tokenizer,
    )
    return model, processor


def wrap_backbone(vlm, config):
    """A `Moon3Model` around the loaded backbone `vlm` itself, never a second copy of its weights.

    The model is built on the meta device (no memory, no random initialisation of a backbone that is thrown away),
    `vlm` takes the backbone's place, and only MOON3's own small modules (fusion, FIRE, projection head) are
    materialised and initialised as `post_init` would (PyTorch's reset, then `_init_weights`), in `vlm`'s dtype."""
    import torch

    from moon3.modeling_moon3 import Moon3Model

    with torch.device("meta"):
        model = Moon3Model(config)
    model.backbone = vlm
    model._register_layer_hooks()  # the FIRE and fusion hooks of the meta backbone's layers go to the real ones
    device = next(vlm.parameters()).device
    for module in (model.fusion, model.fire, model.head):
        if module is None:
            continue
        module.to_empty(device=device)
        for part in module.modules():
            reset = getattr(part, "reset_parameters", None) or getattr(part, "_reset_parameters", None)
            if reset is not None:
                reset()
        module.apply(model._init_weights)
        module.to(vlm.dtype)
    return model


def build_from_backbone(backbone: str, dtype: str = "auto", **config_overrides):
    """Load a pretrained Qwen-VL backbone, add MOON3's tokens and modules; return (model, processor)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    from moon3.processing_moon3 import Moon3Processor
    from train.build_tokenizer import wrap_tokenizer

    tokenizer = wrap_tokenizer(AutoTokenizer.from_pretrained(backbone))
    backbone_config = AutoConfig.from_pretrained(backbone)
    family = backbone_config.model_type
    if family not in FAMILY_IMAGE_SETTINGS:
        raise ValueError(
            f"--backbone {backbone!r} is a {family!r} model; MOON3 supports {list(FAMILY_IMAGE_SETTINGS)}."
        )
    vlm = AutoModelForImageTextToText.from_pretrained(backbone, dtype=dtype)  # the only copy of the weights
    vlm.resize_token_embeddings(len(tokenizer))
    config = moon3_config(vlm.config, tokenizer, **config_overrides)
    model = wrap_backbone(vlm, config)
    image_processor = AutoImageProcessor.from_pretrained(backbone)  # the PIL backend when torchvision is absent
    processor = Moon3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
    )
    return model, processor


def make_parser() -> argparse.ArgumentParser:
    from train.data import at_least

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--backbone", help="Hub id or local folder of a Qwen3-VL / Qwen2.5-VL checkpoint")
    source.add_argument("--random", action="store_true", help="random-initialised small model (see the size flags)")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write (created if missing)")
    parser.add_argument("--dtype", default="auto", help="backbone dtype when loading: auto, bfloat16, float32")
    parser.add_argument(
        "--embedding-dim", type=at_least(1), default=None, help="output embedding size E (default: config's)"
    )
    parser.add_argument("--matryoshka-dims", type=at_least(1), nargs="+", default=None, help="trained prefix sizes")
    parser.add_argument("--no-fusion", action="store_true", help="build without the modality fusion module")
    parser.add_argument("--no-fire", action="store_true", help="build without FIRE")
    parser.add_argument(
        "--max-reasoning-tokens",
        type=at_least(0),
        default=None,
        help="reason-mode budget in tokens (default: config's)",
    )
    group = parser.add_argument_group("random model")
    group.add_argument("--family", default="qwen3_vl", choices=sorted(FAMILY_IMAGE_SETTINGS), help="backbone family")
    group.add_argument("--tokenizer", type=Path, default=None, help="folder of a MOON3 tokenizer to use")
    group.add_argument("--tokenizer-data", type=Path, default=None, help="catalogue folder to train a tokenizer on")
    group.add_argument(
        "--vocab-size", type=at_least(1), default=8000, help="vocabulary size when training a tokenizer"
    )
    group.add_argument("--hidden-size", type=at_least(1), default=256, help="language-model hidden size D")
    group.add_argument("--num-layers", type=at_least(1), default=4, help="decoder layers")
    group.add_argument("--num-heads", type=at_least(1), default=4, help="attention heads of the language model")
    group.add_argument("--vision-hidden-size", type=at_least(1), default=128, help="vision tower hidden size")
    group.add_argument("--vision-depth", type=at_least(1), default=2, help="vision tower blocks")
    group.add_argument(
        "--max-pixels",
        type=at_least(1),
        default=224 * 224,
        help="largest image area after resizing (pixels); 128*128 gives 16 visual tokens per image, 224*224 gives 49",
    )
    group.add_argument("--seed", type=int, default=0, help="initialisation seed")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    overrides: dict[str, Any] = {"use_fusion": not args.no_fusion, "use_fire": not args.no_fire}
    if args.max_reasoning_tokens is not None:
        overrides["max_reasoning_tokens"] = args.max_reasoning_tokens
    if args.embedding_dim is not None:
        overrides["embedding_dim"] = args.embedding_dim
        overrides["matryoshka_dims"] = args.matryoshka_dims or [args.embedding_dim]
    elif args.matryoshka_dims is not None:
        overrides["matryoshka_dims"] = args.matryoshka_dims
    if args.backbone:
        model, processor = build_from_backbone(args.backbone, dtype=args.dtype, **overrides)
    else:
        from transformers import AutoTokenizer

        from train.build_tokenizer import catalogue_texts, train_tokenizer, wrap_tokenizer

        if args.tokenizer is not None:
            tokenizer = wrap_tokenizer(AutoTokenizer.from_pretrained(args.tokenizer))
        elif args.tokenizer_data is not None:
            tokenizer = train_tokenizer(catalogue_texts(args.tokenizer_data), vocab_size=args.vocab_size)
        else:
            raise SystemExit("--random needs --tokenizer or --tokenizer-data")
        sizes = {
            "hidden_size": args.hidden_size,
            "num_layers": args.num_layers,
            "num_heads": args.num_heads,
            "vision_hidden_size": args.vision_hidden_size,
            "vision_depth": args.vision_depth,
        }
        model, processor = build_random(
            tokenizer, family=args.family, seed=args.seed, vlm_sizes=sizes, max_pixels=args.max_pixels, **overrides
        )
    save_checkpoint(model, processor, args.out)
    print(f"wrote {args.out} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")


if __name__ == "__main__":
    main()


def load_for_training(
    model_name_or_path: str | None,
    random_model_sizes: dict | None = None,
    family: str = "qwen3_vl",
    tokenizer_texts: list[str] | None = None,
    dtype: str | None = None,
    seed: int = 0,
    attn_implementation: str | None = None,
    revision: str = "main",
    **config_overrides,
):
    """(model, processor) for a training run: a saved MOON3 checkpoint, or a random one of `random_model_sizes` whose
    tokenizer is trained on `tokenizer_texts` (so that a smoke run needs no files)."""
    from moon3.modeling_moon3 import Moon3Model
    from moon3.processing_moon3 import Moon3Processor

    if random_model_sizes is not None:
        from train.build_tokenizer import train_tokenizer

        if not tokenizer_texts:
            raise ValueError("A random model needs tokenizer_texts to train its tokenizer on.")
        tokenizer = train_tokenizer(tokenizer_texts, vocab_size=min(2000, 300 + 20 * len(tokenizer_texts)))
        model, processor = build_random(
            tokenizer, family=family, seed=seed, vlm_sizes=random_model_sizes, **config_overrides
        )
        processor.image_processor = build_image_processor(family, min_pixels=32 * 32, max_pixels=64 * 64)
        if dtype not in (None, "auto", "float32"):
            import torch

            model = model.to(getattr(torch, dtype))
        if attn_implementation is not None:
            model.backbone.set_attn_implementation(attn_implementation)
        return model, processor
    if model_name_or_path is None:
        raise ValueError("Give --model_name_or_path (a MOON3 checkpoint folder) or --random_model.")
    kwargs = {"dtype": dtype} if dtype not in (None, "auto") else {}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if revision not in (None, "main"):
        kwargs["revision"] = revision
    model = Moon3Model.from_pretrained(model_name_or_path, **kwargs)
    processor = Moon3Processor.from_pretrained(
        model_name_or_path, **({"revision": revision} if "revision" in kwargs else {})
    )
    return model, processor
