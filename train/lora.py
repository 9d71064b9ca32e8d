"""LoRA (PEFT) for both training stages: which modules get adapters, which train fully, and how a run is saved.

`--use_peft` wraps the MOON3 model in a `peft.PeftModel` before the trainer sees it:
- LoRA adapters on the language model's linear layers (`--lora_target_modules`, default the attention and MLP
  projections `q/k/v/o_proj`, `gate/up/down_proj`), matched only inside the backbone, never in MOON3's own modules;
- `modules_to_save` (trained fully, saved with the adapter): the fusion module, every FIRE block and the projection
  head, since they start from zero or random and LoRA's low rank would cap them for no memory gain (they are small);
- `trainable_token_indices` (PEFT's trainable token rows): the rows of `<think>`, `</think>` and `<emb>` in the
  input embedding and, through the backbone's weight tying, in the LM head. A pretrained backbone has never seen these
  tokens; training only their rows costs 3 x hidden parameters instead of the whole (vocabulary x hidden) matrix.
- trainable parameters are kept in float32 (master weights) while a bfloat16 base stays frozen in bfloat16; the
  forward then runs under the Trainer's bf16 autocast (`bf16: true`).

Saving (`save_lora_run`): `output_dir/` holds the merged export (a complete MOON3 checkpoint, loadable like any other
and usable as the next stage's `model_name_or_path`) and `output_dir/adapter/` the adapter alone, with the processor
and sentence-transformers files, whose `base_model_name_or_path` is the checkpoint the run started from (saved into
`output_dir/adapter/base/` when the run started from a random model). Both load with
`AutoModel.from_pretrained(folder, trust_remote_code=True)` and `SentenceTransformer(folder, trust_remote_code=True)`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_DIR = "adapter"


def new_token_ids(config) -> list[int]:
    """Ids of the tokens MOON3 adds to a backbone's vocabulary (`<think>`, `</think>`, `<emb>`)."""
    return [config.think_token_id, config.think_end_token_id, config.emb_token_id]


def own_modules_to_save(model) -> list[str]:
    """MOON3's own modules, trained fully next to the adapters: fusion, each FIRE block, the projection head.

    `head.proj` rather than `head`: PEFT matches names by suffix and `backbone.lm_head` ends with `head`. FIRE's
    blocks are listed one by one because PEFT cannot wrap a `ModuleDict`."""
    names = ["head.proj"]
    if model.fusion is not None:
        names.append("fusion")
    if model.fire is not None:
        names += [f"fire.{layer}" for layer in model.fire]
    return names


def target_module_pattern(model, target_modules: list[str] | None) -> str:
    """A regex over full module names: the named linear layers inside the backbone's language model only.

    `all-linear` means every linear layer of the language model (PEFT's own `all-linear` would also reach MOON3's
    fusion attention, whose output projection `nn.MultiheadAttention` reads as a raw weight)."""
    import torch.nn as nn

    language_model = model.backbone.model.language_model
    if target_modules in (None, []):
        names = list(DEFAULT_TARGET_MODULES)
    elif target_modules in (["all-linear"], "all-linear"):
        names = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in language_model.named_modules()
                if isinstance(module, nn.Linear)
            }
        )
    else:
        names = list(target_modules)
    present = {name.rsplit(".", 1)[-1] for name, _ in language_model.named_modules()}
    missing = [name for name in names if name not in present]
    if missing:
        raise ValueError(
            f"--lora_target_modules {missing} name no layer of the backbone's language model; its linear layers are "
            f"{sorted(n for n in present if n.endswith('proj'))} (or pass all-linear)."
        )
    prefix = re.escape("backbone.model.language_model.")
    return rf"^{prefix}.*\.({'|'.join(re.escape(name) for name in names)})$"


def check_lora_arguments(model_args) -> None:
    """Refuse `ModelConfig` settings that the LoRA route does not honour, naming the flag and the way out."""
    if model_args.load_in_4bit or model_args.load_in_8bit:
        raise ValueError(
            "--load_in_4bit / --load_in_8bit (QLoRA) are not supported: bitsandbytes quantisation is GPU-only and was "
            "never tested with MOON3's FIRE and fusion hooks. Use --use_peft with a bfloat16 base (dtype: bfloat16, "
            "bf16: true) instead, which keeps a 2B model's frozen weights at 2 bytes per parameter."
        )
    if not model_args.use_peft:
        return
    if model_args.lora_task_type not in (None, "CAUSAL_LM"):
        raise ValueError(
            f"--lora_task_type {model_args.lora_task_type!r} is not supported: MOON3 is wrapped as a plain PeftModel "
            "(it is an embedding model with its own forward, not a CAUSAL_LM/FEATURE_EXTRACTION head). Leave it unset."
        )
    if model_args.lora_r < 1:
        raise ValueError(f"--lora_r must be >= 1, got {model_args.lora_r}.")
    if not 0.0 <= model_args.lora_dropout < 1.0:
        raise ValueError(f"--lora_dropout must be in [0, 1), got {model_args.lora_dropout}.")


def lora_config(model, model_args):
    """The `peft.LoraConfig` for `model` from TRL's `ModelConfig` flags (see the module docstring)."""
    from peft import LoraConfig

    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=target_module_pattern(model, model_args.lora_target_modules),
        target_parameters=model_args.lora_target_parameters,
        modules_to_save=own_modules_to_save(model) + list(model_args.lora_modules_to_save or []),
        trainable_token_indices={"embed_tokens": new_token_ids(model.config)},
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
        bias="none",
    )


def apply_lora(model, model_args):
    """Wrap `model` (a `Moon3Model`) for LoRA training; returns the `PeftModel`."""
    import torch
    from peft import get_peft_model

    check_lora_arguments(model_args)
    # PEFT ties the LM head's new-token rows to the embedding's only when it can see the tying; the backbone ties
    # them (Qwen-VL's tie_word_embeddings), one level below where PEFT looks.
    if getattr(model.config.vlm_config, "tie_word_embeddings", False):
        model.config.tie_word_embeddings = True
        model._tied_weights_keys = {"backbone.lm_head.weight": "backbone.model.language_model.embed_tokens.weight"}
    peft_model = get_peft_model(model, lora_config(model, model_args))
    for parameter in peft_model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            # float32 master weights for what trains; the frozen base keeps its dtype
            parameter.data = parameter.data.float()
    cast_inputs_of_trained_copies(peft_model)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    logger.info("LoRA: %d trainable of %d parameters (%.2f%%)", trainable, total, 100 * trainable / max(total, 1))
    return peft_model


def cast_inputs_of_trained_copies(peft_model) -> None:
    """Let the float32 copies of MOON3's modules take a bfloat16 base's activations outside autocast (generation and
    the rank reward's embeddings run without it): each copy casts its floating-point tensor inputs to its own dtype.
    Under autocast the matrix products still run in bfloat16."""
    import torch
    from peft.utils.other import ModulesToSaveWrapper

    def cast(module, args):
        dtype = next(module.parameters()).dtype
        return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)

    for wrapper in peft_model.modules():
        if isinstance(wrapper, ModulesToSaveWrapper):
            for trained_copy in wrapper.modules_to_save.values():
                trained_copy.register_forward_pre_hook(cast)


def merged_model(peft_model, merge: bool = True):
    """The `Moon3Model` with the adapter, the trained token rows and the trained module copies folded in (or, with
    `merge=False`, the frozen base without them). `peft_model` is consumed: pass a copy to keep training it."""
    model = peft_model.merge_and_unload() if merge else peft_model.unload()
    if getattr(model, "_tied_weights_keys", None) is not None and "_tied_weights_keys" in vars(model):
        del model._tied_weights_keys
    if "tie_word_embeddings" in vars(model.config):
        del model.config.tie_word_embeddings
    return model


def save_lora_run(trainer, processor, output_dir: str, base_checkpoint: str | None) -> None:
    """Save a LoRA run: the merged export in `output_dir`, the adapter in `output_dir/adapter` (see module docstring)."""
    import copy

    from train.build_checkpoint import register_auto_classes, save_checkpoint
    from train.write_st_files import write_st_files

    if not trainer.accelerator.is_main_process:
        trainer.accelerator.wait_for_everyone()
        return
    peft_model = trainer.accelerator.unwrap_model(trainer.model)
    out = Path(output_dir)
    adapter_dir = out / ADAPTER_DIR
    base = base_checkpoint
    if base is None:  # a random start: keep the frozen base so that the adapter has something to load onto
        base_dir = adapter_dir / "base"
        save_checkpoint(merged_model(copy.deepcopy(peft_model), merge=False).eval(), processor, base_dir)
        base = str(base_dir.resolve())
    register_auto_classes()
    peft_model.peft_config["default"].base_model_name_or_path = (
        str(Path(base).resolve()) if Path(base).exists() else base
    )
    peft_model.save_pretrained(adapter_dir)
    processor.save_pretrained(adapter_dir)
    write_st_files(adapter_dir, processor.product_instruction, processor.query_instruction)
    save_checkpoint(merged_model(copy.deepcopy(peft_model)).eval(), processor, out)
    logger.info("saved the LoRA adapter to %s and the merged model to %s", adapter_dir, out)
    trainer.accelerator.wait_for_everyone()
