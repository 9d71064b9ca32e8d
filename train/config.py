"""Training configs: `Moon3ScriptArguments` (data and model source), `Moon3ContrastiveConfig` (stage 1, cold start)
and `Moon3GRPOConfig` (stage 2, GRPO + contrastive). Every field has help text, so `--help` is the reference."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments
from trl import GRPOConfig, ScriptArguments

RANDOM_MODEL_SIZES = {
    # hidden 64, 2 layers: a step in well under a second on one CPU core; for smoke runs and tests.
    "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "vision_hidden_size": 32, "vision_depth": 2},
    # the shipped moon3-mini size (build_checkpoint's defaults)
    "mini": {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "vision_hidden_size": 128, "vision_depth": 2},
}


@dataclass
class Moon3ScriptArguments(ScriptArguments):
    """
    Where the data and the model come from.

    Parameters:
        dataset_name (`str`): JSONL or Parquet file(s) in MOON3's training format (see `train/data.py`), comma-separated.
        synthetic_rows (`int`): use N rows of the built-in synthetic catalogue instead of files (0 = off).
        random_model (`str`): build a random-initialised MOON3 of this size (`tiny`, `mini`) instead of loading
            `--model_name_or_path`; its tokenizer is trained on the training texts.
    """

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "JSONL/Parquet file(s) in MOON3's training format (see train/data.py), comma-separated."},
    )
    synthetic_rows: int = field(
        default=0,
        metadata={"help": "Rows of the built-in synthetic catalogue to train on instead of files (0 = off)."},
    )
    random_model: str | None = field(
        default=None,
        metadata={
            "help": "Build a random-initialised MOON3 of this size instead of loading --model_name_or_path; the "
            "tokenizer is trained on the training texts.",
            "choices": sorted(RANDOM_MODEL_SIZES),
        },
    )
    random_model_family: str = field(
        default="qwen3_vl",
        metadata={"help": "Backbone family of --random_model.", "choices": ["qwen3_vl", "qwen2_5_vl"]},
    )
    skip_bad_rows: bool = field(
        default=False,
        metadata={
            "help": "Leave out training rows that fail validation (schema, keys, types, images) instead of stopping; "
            "they are counted and listed in <output_dir>/rejected_rows.jsonl."
        },
    )
    freeze_vision_tower: bool = field(
        default=False,
        metadata={
            "help": "Freeze the vision tower. With text-only data under DDP, either freeze it or set "
            "ddp_find_unused_parameters=true: its weights take no part in the step."
        },
    )

    def __post_init__(self):
        # TRL's ScriptArguments fields for Hub datasets, which MOON3's file loader does not read
        ignored = {
            "dataset_config": None,
            "dataset_train_split": "train",
            "dataset_test_split": "test",
            "dataset_streaming": False,
            "ignore_bias_buffers": False,
        }
        changed = [name for name, default in ignored.items() if getattr(self, name) != default]
        if changed:
            raise ValueError(
                f"--{', --'.join(changed)} not supported: MOON3 reads --dataset_name as JSONL/Parquet files in its "
                "training format (train/data.py), not a Hub dataset; drop the flag(s)."
            )
        if self.dataset_name is None and self.synthetic_rows <= 0:
            raise ValueError("Give --dataset_name (JSONL/Parquet files) or --synthetic_rows N (> 0).")
        if self.random_model is not None and self.random_model not in RANDOM_MODEL_SIZES:
            raise ValueError(f"random_model must be one of {sorted(RANDOM_MODEL_SIZES)}, got {self.random_model!r}.")


@dataclass
class Moon3ContrastiveConfig(TrainingArguments):
    r"""
    Configuration of stage 1 (cold start): InfoNCE between queries and products plus a weighted SFT loss on
    reasoning targets, with gradient caching so that the contrastive batch is not bounded by memory.

    > Parameters that control the contrastive loss

        contrastive_temperature (`float`): InfoNCE temperature (divides the cosine similarities).
        matryoshka_dims (`list[int]`): prefix sizes to train; empty = the model config's `matryoshka_dims`.
        gather_across_devices (`bool`): use every process's documents as negatives.
        num_hard_negatives (`int`): hard negatives per row (rows with fewer are padded with their positive, which
            the loss masks out).

    > Parameters that control the SFT loss and memory

        sft_weight (`float`): weight of the next-token loss on the reasoning targets (0 = no SFT).
        reasoned_contrastive_weight (`float`): weight of a second InfoNCE term whose queries are embedded after their
            reasoning target, products in direct mode: it trains reason mode's readout (0 = off).
        reasoning_noise (`float`): in that term, the chance that each field value of a reasoning target is swapped
            for another row's value of the same field, as the model's own reasoning is sometimes wrong.
        embedding_chunk_size (`int`): sequences per forward in gradient caching (0 = all at once, no caching).

    > Parameters that control the photo attribute head

        photo_attribute_weight (`float`): weight of a cross-entropy loss from a linear head that reads each photo's
            visual tokens, as they enter the language model (mean over the image), and predicts its product's
            `photo_attribute_fields`; it gives the vision tower and projector a direct signal to read the attributes
            from a photo. The head is used in training only and is not saved. 0 = off.
        photo_attribute_fields (`list[str]`): the product attributes the head predicts.

        stop_on_nonfinite_loss (`bool`): stop with an error naming the step and the term when a loss is NaN/inf.
    """

    contrastive_temperature: float = field(
        default=0.05, metadata={"help": "InfoNCE temperature; cosine similarities are divided by it."}
    )
    matryoshka_dims: list[int] | None = field(
        default=None, metadata={"help": "Matryoshka prefix sizes to train (empty = the model config's)."}
    )
    gather_across_devices: bool = field(
        default=True, metadata={"help": "Gather every process's documents (with gradient) as extra negatives."}
    )
    num_hard_negatives: int = field(default=0, metadata={"help": "Hard negatives per row (0 = none)."})
    sft_weight: float = field(
        default=0.1, metadata={"help": "Weight of the SFT loss on the reasoning targets (0 = contrastive only)."}
    )
    reasoned_contrastive_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of a second InfoNCE term: queries embedded after their reasoning target "
            "(prompt<think>reasoning</think><emb>) against direct-mode products; trains reason mode (0 = off)."
        },
    )
    reasoning_noise: float = field(
        default=0.0,
        metadata={
            "help": "In the reasoned InfoNCE term, the chance that each field value of a reasoning target is swapped "
            "for the same field's value of another row of the batch (0 = the gold reasoning)."
        },
    )
    embedding_chunk_size: int = field(
        default=0,
        metadata={
            "help": "Sequences per forward pass with gradient caching; memory grows with this, not with the batch "
            "(0 = all sequences in one forward, no caching)."
        },
    )
    photo_attribute_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the photo attribute loss: a linear head on each photo's visual tokens (their mean as "
            "they enter the language model) predicts its product's photo_attribute_fields; training only, not saved "
            "(0 = off)."
        },
    )
    photo_attribute_fields: list[str] = field(
        default_factory=lambda: ["articleType", "baseColour", "gender", "season", "usage"],
        metadata={"help": "Product attributes the photo attribute head predicts (with photo_attribute_weight > 0)."},
    )
    stop_on_nonfinite_loss: bool = field(
        default=True, metadata={"help": "Stop with an error naming the step and the term when a loss is NaN or inf."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep the data columns: the MOON3 collator reads them."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.contrastive_temperature <= 0:
            raise ValueError(f"contrastive_temperature must be > 0, got {self.contrastive_temperature}.")
        if self.reasoned_contrastive_weight < 0:
            raise ValueError(f"reasoned_contrastive_weight must be >= 0, got {self.reasoned_contrastive_weight}.")
        if not 0.0 <= self.reasoning_noise <= 1.0:
            raise ValueError(f"reasoning_noise is a probability in [0, 1], got {self.reasoning_noise}.")
        if self.photo_attribute_weight < 0:
            raise ValueError(f"photo_attribute_weight must be >= 0, got {self.photo_attribute_weight}.")
        if self.photo_attribute_weight > 0 and not self.photo_attribute_fields:
            raise ValueError("photo_attribute_weight > 0 needs at least one photo_attribute_fields entry.")
        if self.photo_attribute_weight > 0 and self.resume_from_checkpoint:
            raise ValueError(
                "resume_from_checkpoint is not supported with photo_attribute_weight > 0: the photo attribute head "
                "is not saved in checkpoints, so a resumed run would restart it from zero. Train without resuming, "
                "or set photo_attribute_weight 0."
            )
        if self.sft_weight < 0 or self.embedding_chunk_size < 0 or self.num_hard_negatives < 0:
            raise ValueError(
                f"sft_weight ({self.sft_weight}), embedding_chunk_size ({self.embedding_chunk_size}) and "
                f"num_hard_negatives ({self.num_hard_negatives}) must be >= 0."
            )


@dataclass
class Moon3GRPOConfig(GRPOConfig):
    r"""
    Configuration of stage 2: TRL's `GRPOConfig` plus the contrastive term and MOON3's rewards.

    > Parameters that control the contrastive loss

        contrastive_weight (`float`): lambda in `loss = grpo + lambda * InfoNCE` (0 = plain GRPO).
        contrastive_temperature (`float`): InfoNCE temperature (divides the cosine similarities).
        matryoshka_dims (`list[int]`): prefix sizes to train; empty = the model config's.
        gather_across_devices (`bool`): use every process's candidates as negatives.
        direct_contrastive_weight (`float`): weight of a second InfoNCE term, stage 1's own: each step's distinct
            queries and their products embedded in direct mode, with gradient on both sides; 0 leaves it out.

    > Parameters that control the rewards (their weights become TRL's `reward_weights`)

        retrieval_reward_weight, format_reward_weight, length_reward_weight (`float`): weights of each reward.
        attribute_reward_weight (`float`): weight of the attribute reward (the reasoning's fields against the row's
            `reasoning` target, `train.rewards.make_attribute_reward`); 0 leaves it out.
        attribute_reward_photo_queries (`bool`): give the attribute reward on photo-only queries too; false leaves
            them out of it (they keep the other rewards and the contrastive terms).
        target_reasoning_tokens (`int`): reasoning longer than this is penalised by the length reward.
        stop_on_nonfinite_loss (`bool`): stop with an error naming the step and the term when a loss is NaN/inf.
    """

    contrastive_weight: float = field(
        default=0.5, metadata={"help": "Weight lambda of the InfoNCE term: loss = grpo + lambda * InfoNCE (0 = off)."}
    )
    contrastive_temperature: float = field(
        default=0.05, metadata={"help": "InfoNCE temperature; cosine similarities are divided by it."}
    )
    matryoshka_dims: list[int] | None = field(
        default=None, metadata={"help": "Matryoshka prefix sizes to train (empty = the model config's)."}
    )
    gather_across_devices: bool = field(
        default=True, metadata={"help": "Gather every process's candidates (with gradient) as extra negatives."}
    )
    direct_contrastive_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of an InfoNCE term on the step's queries and products in direct mode, gradient on both "
            "sides (stage 1's loss; keeps direct mode trained during GRPO). 0 = off."
        },
    )
    retrieval_reward_weight: float = field(
        default=1.0, metadata={"help": "Weight of the retrieval-rank reward 1 - log(rank)/log(N)."}
    )
    format_reward_weight: float = field(
        default=0.5, metadata={"help": "Weight of the format reward (completion ends with </think><emb>)."}
    )
    length_reward_weight: float = field(
        default=0.1, metadata={"help": "Weight of the length reward (penalty beyond target_reasoning_tokens)."}
    )
    attribute_reward_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the attribute reward: share of the row's `reasoning` target fields the completion "
            "states rightly (0 = off; the dataset needs a `reasoning` column)."
        },
    )
    attribute_reward_photo_queries: bool = field(
        default=True,
        metadata={
            "help": "Give the attribute reward on photo-only queries too. false leaves them out of it: on photos the "
            "model cannot read, it pays most for each field's majority value (docs/reasoning.md)."
        },
    )
    target_reasoning_tokens: int = field(
        default=64, metadata={"help": "Reasoning tokens allowed before the length reward falls below 0."}
    )
    stop_on_nonfinite_loss: bool = field(
        default=True, metadata={"help": "Stop with an error naming the step and the term when a loss is NaN or inf."}
    )

    def __post_init__(self):
        if self.reward_weights is None:
            self.reward_weights = [self.retrieval_reward_weight, self.format_reward_weight, self.length_reward_weight]
            if self.attribute_reward_weight > 0:
                self.reward_weights.append(self.attribute_reward_weight)
        super().__post_init__()
        if self.attribute_reward_weight < 0:
            raise ValueError(f"attribute_reward_weight must be >= 0, got {self.attribute_reward_weight}.")
        if self.contrastive_weight < 0:
            raise ValueError(f"contrastive_weight must be >= 0, got {self.contrastive_weight}.")
        if self.direct_contrastive_weight < 0:
            raise ValueError(f"direct_contrastive_weight must be >= 0, got {self.direct_contrastive_weight}.")
        if self.contrastive_temperature <= 0:
            raise ValueError(f"contrastive_temperature must be > 0, got {self.contrastive_temperature}.")
        if self.target_reasoning_tokens < 1:
            raise ValueError(f"target_reasoning_tokens must be >= 1, got {self.target_reasoning_tokens}.")
        if self.cast_lm_head_to_fp32:
            raise ValueError(
                "cast_lm_head_to_fp32 is not supported: TRL patches a `model.lm_head`, which MOON3 keeps inside its "
                "backbone; its policy head upcasts each tile of logits to float32 anyway. Drop the flag."
            )
        if self.use_liger_kernel:
            raise ValueError(
                "use_liger_kernel is not supported: Liger patches the model types it knows and MOON3 is not one. "
                "Drop the flag."
            )
