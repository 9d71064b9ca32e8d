"""Stage 2: `Moon3GRPOTrainer`, TRL's `GRPOTrainer` plus a contrastive term on the completions' embeddings.

Per step, on top of TRL's GRPO:
- rewards: before TRL's reward functions run, each completion's embedding at its `<emb>` (no gradient) is ranked
  against the batch's candidates (positive products and one hard negative per row, gathered across processes),
  which were embedded in direct mode with the current model; the rank goes to `retrieval_rank_reward`;
- loss: `grpo + contrastive_weight * InfoNCE(completion embeddings, candidates)`, where the completion embeddings come
  from the very forward pass that gives TRL its token log-probabilities (MOON3 reads `<emb>` in that pass), plus
  `direct_contrastive_weight * InfoNCE` of the step's queries and products in direct mode (gradient on both sides)
  when that weight is > 0.

TRL hooks used (pinned by `trl>=1.16,<1.17`; `tests/train/test_training.py::test_trl_private_hooks_keep_the_signatures_we_rely_on`
fails if they change): `_calculate_rewards`, `_generate_and_score_completions`, `_generate_single_turn` (all called
through `super()`) and the fused LM head of `_get_per_token_logps_and_entropies`
(`model(..., labels=..., fused_lm_head=True).log_probs / .entropy`).

The completions' embeddings for the rank reward are read during generation (`train/grpo_embedding.py`): the decode
step that feeds a row's `<emb>` back has its hidden state; one extra decode step over the generation's cache, run on
every process every time (ZeRO-3 needs the same forwards everywhere), gives the rest. Rollouts use transformers'
`generate` only: `use_vllm` and `use_transformers_continuous_batching` are refused (`check_rollout_engine`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from accelerate.utils import is_peft_model
from torch.utils.checkpoint import checkpoint
from transformers.utils import ModelOutput
from trl import GRPOTrainer
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.trainer.callbacks import SyncRefModelCallback
from trl.trainer.utils import RepeatSampler, entropy_from_logits, selective_log_softmax

from train.checkpointing import CheckpointMixin, EpochSeededRepeatSampler
from train.contrastive_trainer import check_finite
from train.data import clean_item, product_key, query_item
from train.distributed import gather_no_grad
from train.grpo_embedding import GenerationRecorder, completion_embeddings
from train.losses import Moon3InfoNCELoss, in_batch_accuracy
from train.rewards import moon3_reward_funcs, reasoning_lengths

logger = logging.getLogger(__name__)

# Logits per tile of the policy's log-probabilities: 2**24 float32 values = 64 MiB (TRL's own fused head tiles
# 4096 tokens x 32768 vocabulary entries).
LOGIT_TILE_ELEMENTS = 2**24


@dataclass
class Moon3PolicyOutput(ModelOutput):
    """What TRL's fused-LM-head call gets from a MOON3 policy: per-token `log_probs` and `entropy` (Tensor[B, L-1],
    zero before the first scored position), and the `embeddings` (Tensor[B, E]) read at `<emb>` in the same pass."""

    log_probs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None
    loss: torch.Tensor | None = None


def install_fused_policy_head(model, temperature: float = 1.0) -> None:
    """Make `model(..., labels=labels, fused_lm_head=True)` return `Moon3PolicyOutput` (log-probs, entropy AND the
    embedding) in one forward.

    TRL's own fused head reads `model.base_model(...).last_hidden_state`, which would skip MOON3's FIRE, fusion and
    `<emb>` readout; this one runs MOON3's forward without logits, takes the final hidden states the backbone returned
    in that same pass, and scores the completion positions tile by tile (`tiled_log_probs`): the full (completions x
    positions x vocabulary) float32 logits are never materialised, in the forward or the backward.
    Without `fused_lm_head` the model's own forward runs (generation is unchanged).
    """

    @functools.wraps(type(model).forward)  # generate() validates its kwargs against this signature
    def forward(self, *args, fused_lm_head=False, labels=None, **kwargs):
        if not fused_lm_head:
            if kwargs.get("raw_signals") is None and (
                kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None
            ):
                # A decode step of generate(): a row that already produced <emb> feeds it back while the others
                # continue; there is no embedding to read there (and no prompt signals for the fusion module).
                kwargs.setdefault("return_embeddings", False)
            return type(self).forward(self, *args, labels=labels, **kwargs)
        kwargs.pop("num_items_in_batch", None)
        final_states: list[torch.Tensor] = []
        handle = self.backbone.model.register_forward_hook(
            lambda module, inputs, output: final_states.append(output.last_hidden_state)
        )
        try:
            outputs = type(self).forward(self, *args, return_embeddings=True, use_cache=False, **kwargs)
        finally:
            handle.remove()
        log_probs, entropy = tiled_log_probs(final_states[-1], labels, self.backbone.lm_head, temperature)
        return Moon3PolicyOutput(log_probs=log_probs, entropy=entropy, embeddings=outputs.embeddings)

    model.forward = types.MethodType(forward, model)


def tiled_log_probs(
    hidden_states, labels, lm_head, temperature: float = 1.0, tile_elements: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities and entropies (each Tensor[B, L - 1], zero before the first scored column and where
    `labels` is -100) of `lm_head` over `hidden_states` (Tensor[B, L, D]); position j predicts `labels[:, j + 1]`.

    Only the columns from the first scored one on get logits, in tiles of at most `tile_elements` logits (rows of the
    batch, or single positions when one row is larger), each under activation checkpointing: a tile's float32 logits
    live only while that tile is computed, again in the backward. Within a tile the arithmetic is the plain one
    (`lm_head`, float32, `selective_log_softmax`, `entropy_from_logits`), so a batch that fits one tile gets exactly
    the values of the untiled computation. `lm_head` is called as a module, so PEFT's trained token rows take part.
    """
    scored = (labels != -100).any(dim=0).nonzero()  # columns whose token is scored
    first = int(scored[0]) if len(scored) else labels.shape[1] - 1
    kept = hidden_states[:, first - 1 :] if first > 0 else hidden_states  # (B, K, D): positions first-1 .. L-1
    targets = labels[:, -(kept.shape[1] - 1) :] if kept.shape[1] > 1 else labels[:, :0]  # (B, K - 1)
    batch, width = targets.shape
    vocab = lm_head.weight.shape[0]
    tile_elements = tile_elements or LOGIT_TILE_ELEMENTS

    def score(states, tile_targets):
        logits = lm_head(states)[:, :-1].float() / temperature  # (b, k - 1, V)
        log_probs = selective_log_softmax(logits, tile_targets.clamp(min=0)).masked_fill(tile_targets == -100, 0.0)
        return log_probs, entropy_from_logits(logits)

    rows_per_tile = tile_elements // max(1, kept.shape[1] * vocab)
    if rows_per_tile >= 1:
        tiles = [
            checkpoint(
                score, kept[start : start + rows_per_tile], targets[start : start + rows_per_tile], use_reentrant=False
            )
            for start in range(0, batch, rows_per_tile)
        ]
    else:  # one row alone is larger than a tile: score a few positions at a time (each needs its next position)
        step = max(1, tile_elements // vocab)
        tiles = []
        for row in range(batch):
            parts = [
                checkpoint(
                    score,
                    kept[row : row + 1, start : start + step + 1],
                    targets[row : row + 1, start : start + step],
                    use_reentrant=False,
                )
                for start in range(0, width, step)
            ]
            tiles.append(tuple(torch.cat(values, dim=1) for values in zip(*parts, strict=True)))
    log_probs, entropy = (torch.cat(values) for values in zip(*tiles, strict=True))  # (B, K - 1) each
    pad = (labels.shape[1] - 1 - width, 0)
    return F.pad(log_probs, pad), F.pad(entropy, pad)


def find_unused_from_whole_loss(model, loss: torch.Tensor) -> None:
    """Under DDP with `find_unused_parameters`, search the unused parameters from the whole `loss`.

    DDP searches them from the outputs of the module's LAST forward. The direct-mode term runs two more forwards after
    the policy's (queries, then products), and a parameter that only an earlier forward used (the vision tower, for
    photo queries beside text-only products) would be marked unused, then ready a second time in the backward
    ("Expected to mark a variable ready only once"). Searching from the loss, which every forward feeds, marks only
    the truly unused ones. Nothing to do without DDP, without that flag, or when gradients are not synchronised.
    """
    if (
        isinstance(model, torch.nn.parallel.DistributedDataParallel)
        and model.find_unused_parameters
        and model.require_backward_grad_sync
        and torch.is_grad_enabled()
    ):
        model.reducer.prepare_for_backward([loss])


def check_rollout_engine(args) -> None:
    """Refuse rollout engines that would not sample from the policy being trained (a `ValueError` saying why).

    - vLLM: it has no MOON3 architecture (it would load the bare Qwen-VL backbone), TRL syncs weights into it by
      parameter name and MOON3's `backbone.model.*`, `fusion.*` and `fire.*` do not map onto vLLM's Qwen-VL names,
      and a sampler without FIRE is not the policy whose log-probabilities GRPO trains.
    - transformers' continuous batching (`use_transformers_continuous_batching`): TRL passes it the prompt token ids only (no
      `pixel_values`, so image prompts would be sampled blind), it packs requests into one ragged sequence that MOON3's
      per-row FIRE positions and raw signals do not describe, and it keeps no per-row cache for the `<emb>` readout.
    """
    if getattr(args, "use_vllm", False):
        raise ValueError(
            "use_vllm=True cannot sample from the MOON3 policy: vLLM has no MOON3 architecture, TRL syncs weights into "
            "it by parameter name (MOON3's backbone.model.*, fusion.* and fire.* do not map onto vLLM's Qwen-VL), and a "
            "policy without FIRE and fusion is not the policy being trained. Set use_vllm=false: rollouts then use "
            "transformers' generate with MOON3's own forward (FIRE included)."
        )
    if getattr(args, "use_transformers_continuous_batching", False):
        raise ValueError(
            "use_transformers_continuous_batching=True is not supported by Moon3GRPOTrainer: TRL hands it only "
            "the prompt token ids (image prompts would be sampled without their pixels), it packs rows into one "
            "sequence that MOON3's FIRE positions do not describe, and it keeps no per-row cache for the <emb> "
            "readout. Set use_transformers_continuous_batching=false."
        )


class Moon3GRPOTrainer(CheckpointMixin, GRPOTrainer):
    """GRPO with MOON3's rewards and a contrastive term on the completions' embeddings.

    Args:
        model (`Moon3Model`): the policy (a MOON3 model instance).
        args (`Moon3GRPOConfig`): TRL's GRPO settings plus the contrastive and reward settings.
        train_dataset: rows in MOON3's format with TRL's `prompt` (and `images`) columns (`train.data.to_grpo_dataset`).
        processing_class (`Moon3Processor`): the model's processor.
        loss_fn (`Moon3InfoNCELoss`, *optional*): built from `args` when omitted.
        reward_funcs (*optional*): defaults to retrieval rank, format and length, plus the attribute reward when
            `attribute_reward_weight > 0` (`train.rewards.moon3_reward_funcs`).

    Example:

    ```python
    >>> trainer = Moon3GRPOTrainer(model=model, args=Moon3GRPOConfig(...), train_dataset=to_grpo_dataset(rows, processor),
    ...                            processing_class=processor)
    >>> trainer.train()
    ```
    """

    def __init__(
        self,
        model,
        args,
        train_dataset,
        processing_class,
        loss_fn: Moon3InfoNCELoss | None = None,
        reward_funcs=None,
        **kwargs,
    ):
        check_rollout_engine(args)  # before TRL's __init__, which would import and start vLLM
        config = model.config
        # Completions must end `reasoning</think><emb>`: stop generating at <emb>.
        model.generation_config.eos_token_id = config.emb_token_id
        model.generation_config.pad_token_id = config.pad_token_id
        if reward_funcs is None:
            attribute_tokenizer = None
            if getattr(args, "attribute_reward_weight", 0.0) > 0:
                columns = getattr(train_dataset, "column_names", None)
                if columns is not None and "reasoning" not in columns:
                    raise ValueError(
                        "attribute_reward_weight > 0 needs a `reasoning` column (the stage-1 reasoning target) in "
                        f"the training data; it has {sorted(columns)}. Build the data with `python -m train.data "
                        "build-fashion` or set attribute_reward_weight 0."
                    )
                attribute_tokenizer = getattr(processing_class, "tokenizer", processing_class)
            reward_funcs = moon3_reward_funcs(
                config.think_end_token_id,
                config.emb_token_id,
                args.target_reasoning_tokens,
                attribute_tokenizer,
                getattr(args, "attribute_reward_photo_queries", True),
            )
        # KL to a reference (beta > 0): TRL would load its reference by the config's path and give it TRL's fused
        # head, which reads the backbone's output and skips FIRE, fusion and `<emb>`. The reference is built here
        # instead, as a frozen copy of the initial policy with MOON3's head; TRL's init runs with beta = 0 so that it
        # builds none, then beta is restored. With LoRA, TRL's own rule holds: the reference is the policy with its
        # adapter disabled (no copy).
        beta, sync_ref_model = args.beta, args.sync_ref_model
        reference = None
        if beta != 0.0 and kwargs.get("peft_config") is None and not is_peft_model(model):
            reference = copy.deepcopy(model).eval().requires_grad_(False)
        args.beta, args.sync_ref_model = 0.0, False
        try:
            super().__init__(
                model=model,
                reward_funcs=reward_funcs,
                args=args,
                train_dataset=train_dataset,
                processing_class=processing_class,
                **kwargs,
            )
        finally:
            args.beta, args.sync_ref_model = beta, sync_ref_model
        self.beta = beta
        if reference is not None:
            install_fused_policy_head(reference, temperature=self.temperature)
            self.ref_model = self._prepare_reference(reference)
            if sync_ref_model:
                self.add_callback(SyncRefModelCallback(ref_model=self.ref_model, accelerator=self.accelerator))
        elif sync_ref_model:
            raise ValueError(
                f"sync_ref_model=True needs a separate reference model, which exists only with beta > 0 (got "
                f"{beta}) and without LoRA (the LoRA reference is the policy with its adapter disabled). Set "
                "sync_ref_model=False."
            )
        if (
            self.tools or self.rollout_func is not None
        ):  # completions would no longer match one generation's embeddings
            raise ValueError("Moon3GRPOTrainer does not support tools or rollout_func.")
        self.loss_fn = loss_fn or Moon3InfoNCELoss(
            temperature=args.contrastive_temperature,
            matryoshka_dims=args.matryoshka_dims or config.matryoshka_dims,
            gather_across_devices=args.gather_across_devices,
        )
        install_fused_policy_head(self._policy_module(), temperature=self.temperature)
        if self.log_multimodal and self.accelerator.num_processes > 1:
            # TRL gathers the logged images only on processes whose batch has images (`images is not None`): with
            # image and text queries, a process that drew only text rows skips that collective and every process
            # hangs at the next one. Images are not logged then; completions, rewards and metrics still are.
            logger.warning(
                "log_multimodal is turned off on %d processes: TRL gathers logged images only where a batch has "
                "images, which hangs a run that mixes image and text queries across processes.",
                self.accelerator.num_processes,
            )
            self.log_multimodal = False
        self._pending_candidates: dict[str, torch.Tensor] = {}
        self._direct_rows: list[tuple] = []
        self._completion_embeddings: torch.Tensor | None = None

    # ----- checkpoints and resuming (train/checkpointing.py)

    def _get_train_sampler(self, dataset=None):
        """TRL's sampler, with each epoch's prompt order drawn from (seed, epoch): a resume in a later epoch sees the
        uninterrupted run's order (TRL's own generator would restart at epoch 0's)."""
        sampler = super()._get_train_sampler(dataset)
        if type(sampler) is not RepeatSampler:  # a TRL release that changed the sampler: keep its own
            return sampler
        return EpochSeededRepeatSampler(
            data_source=sampler.data_source,
            mini_repeat_count=sampler.mini_repeat_count,
            batch_size=sampler.batch_size,
            repeat_count=sampler.repeat_count,
            shuffle=sampler.shuffle,
            seed=sampler.seed,
        )

    def _extra_checkpoint_state(self) -> dict:
        return {"grpo_micro_step": self._step}  # TRL's counter of when to generate again (not in trainer_state)

    def _restore_extra_checkpoint_state(self, state: dict) -> None:
        self._step = int(state.get("grpo_micro_step", self._step))
        generate_every = self.args.steps_per_generation * self.num_iterations
        if self._step % generate_every:
            logger.warning(
                "resuming inside a generation block (micro-step %d of every %d): its buffered completions were not "
                "saved, so they are generated again and the run departs from the uninterrupted one. Save at "
                "multiples of steps_per_generation * num_iterations / gradient_accumulation_steps for exact resumes.",
                self._step,
                generate_every,
            )

    def _policy_module(self):
        """The `Moon3Model` being trained, outside DDP/DeepSpeed and PEFT wrappers."""
        model = self.accelerator.unwrap_model(self.model)
        return model.get_base_model() if is_peft_model(model) else model

    def _prepare_reference(self, reference):
        """Place the reference model as TRL places its own (DeepSpeed, FSDP or plain evaluation mode)."""
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(reference, self.accelerator)
        if self.is_fsdp_enabled:
            return prepare_fsdp(reference, self.accelerator)
        return self.accelerator.prepare_model(reference, evaluation_mode=True)

    # ----- loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with self._capture_policy_embeddings() as captured:
            grpo_loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        completion_embeddings = torch.cat(captured)  # (B, E), from the forward that gave the log-probs
        doc_embeddings = torch.cat([inputs["positive_embeddings"], inputs["negative_embeddings"]])  # (2B, E)
        doc_keys = torch.cat([inputs["positive_keys"], inputs["negative_keys"]])  # (2B,)
        contrastive = self.loss_fn(completion_embeddings, doc_embeddings, doc_keys=doc_keys)
        loss = grpo_loss + self.args.contrastive_weight * contrastive / self.current_gradient_accumulation_steps
        if self.args.direct_contrastive_weight > 0:
            direct = self._direct_contrastive(model, inputs["direct_row"])
            loss = loss + self.args.direct_contrastive_weight * direct / self.current_gradient_accumulation_steps
            find_unused_from_whole_loss(model, loss)
        self._check_and_log(
            grpo_loss * self.current_gradient_accumulation_steps,
            contrastive,
            completion_embeddings,
            doc_embeddings,
            doc_keys,
        )
        return loss

    def _direct_contrastive(self, model, row_indices: torch.Tensor) -> torch.Tensor:
        """Stage 1's InfoNCE on this step's rows (Tensor[B] of indices into the generation's `_direct_rows`): each
        query and its positive and first hard negative embedded in direct mode, with gradient on both sides. Each
        distinct query and product is embedded once; the loss sees B queries and 2B documents on every process."""
        rows = [self._direct_rows[i] for i in row_indices.tolist()]
        queries = {index: row[0] for index, row in zip(row_indices.tolist(), rows, strict=True)}  # distinct queries
        products = {}
        for _, positive, negative in rows:
            products.setdefault(product_key(positive), positive)
            products.setdefault(product_key(negative), negative)
        device = self.accelerator.device
        query_batch = self.processing_class(queries=list(queries.values()), mode="direct").to(device)
        product_batch = self.processing_class(products=list(products.values()), mode="direct").to(device)
        query_embeddings = model(**query_batch, return_embeddings=True).embeddings  # (Q, E)
        product_embeddings = model(**product_batch, return_embeddings=True).embeddings  # (P, E)
        query_column = {index: c for c, index in enumerate(queries)}
        product_column = {key: c for c, key in enumerate(products)}
        keys = [product_key(row[1]) for row in rows] + [product_key(row[2]) for row in rows]  # 2B
        query_rows = torch.tensor([query_column[i] for i in row_indices.tolist()], device=device)
        doc_rows = torch.tensor([product_column[key] for key in keys], device=device)
        doc_keys = torch.tensor(keys, dtype=torch.long, device=device)
        direct = self.loss_fn(query_embeddings[query_rows], product_embeddings[doc_rows], doc_keys=doc_keys)
        if self.args.stop_on_nonfinite_loss:
            check_finite(direct.detach(), "direct-mode contrastive (InfoNCE)", self.state.global_step + 1)
        self._metrics["train" if self.model.training else "eval"]["contrastive/direct_loss"].append(direct.item())
        return direct

    @contextlib.contextmanager
    def _capture_policy_embeddings(self):
        """Collect the `<emb>` embeddings of the policy forwards run inside the block (a forward hook, removed after)."""
        captured: list[torch.Tensor] = []

        def hook(module, args, output):
            if isinstance(output, Moon3PolicyOutput):
                captured.append(output.embeddings)

        handle = self.accelerator.unwrap_model(self.model).register_forward_hook(hook)
        try:
            yield captured
        finally:
            handle.remove()

    def _check_and_log(self, grpo_loss, contrastive, completion_embeddings, doc_embeddings, doc_keys) -> None:
        step = self.state.global_step + 1
        if self.args.stop_on_nonfinite_loss:
            check_finite(grpo_loss.detach(), "GRPO", step)
            check_finite(contrastive.detach(), "contrastive (InfoNCE)", step)
        metrics = self._metrics["train" if self.model.training else "eval"]
        metrics["grpo/loss"].append(grpo_loss.item())
        metrics["contrastive/loss"].append(contrastive.item())
        metrics["retrieval/in_batch_accuracy"].append(
            in_batch_accuracy(completion_embeddings, doc_embeddings, doc_keys)
        )

    # ----- candidates and retrieval ranks (for the rewards and the contrastive term)

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        output.update(self._pending_candidates)  # per-row tensors: they follow TRL's shuffle and split
        self._pending_candidates = {}
        return output

    def _generate(self, prompts):
        """TRL's generation; a text prompt's image list comes back as `None` (TRL's `_tokenize_prompts`) and TRL then
        hands the whole list to the processor, which fails on `None` in a batch mixing image and text queries: give
        those rows `[]`, as the dataset's `images` column does."""
        *outputs, images, tool_images = super()._generate(prompts)
        if images is not None:
            images = [image_list or [] for image_list in images]
        return (*outputs, images, tool_images)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs):
        """TRL's generation (transformers' `generate`), keeping the completions' embeddings for the rank reward: read
        from the generation itself plus one decode step that every process runs (`train/grpo_embedding.py`)."""
        model = self._policy_module()  # generate() runs on it: its forward hooks fire (a PeftModel's do not)
        with GenerationRecorder(model) as recorder:
            completion_ids, logprobs = super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs
            )
            self._completion_embeddings = completion_embeddings(model, recorder, completion_ids)  # (B, E)
        return completion_ids, logprobs

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        candidates = self._embed_candidates(inputs)
        completion_embeddings, self._completion_embeddings = self._completion_embeddings, None  # (B, E)
        if completion_embeddings is None or len(completion_embeddings) != len(completion_ids_list):
            raise RuntimeError(
                "Moon3GRPOTrainer: no completion embeddings from this generation (tool calls and "
                "custom rollout functions are not supported)."
            )
        ranks, total = self._retrieval_ranks(completion_embeddings, candidates)
        for row, rank in zip(inputs, ranks, strict=True):
            row["retrieval_rank"], row["num_candidates"] = rank, total
        lengths = reasoning_lengths(completion_ids_list, self.model.config.think_end_token_id)
        self._metrics["train" if self.model.training else "eval"]["completions/reasoning_length"].append(
            sum(lengths) / max(len(lengths), 1)
        )
        if self.args.direct_contrastive_weight > 0:
            # The rows' raw query and products, for the direct-mode term; an index per row follows TRL's shuffle.
            self._direct_rows = [
                (query_item(row["query"]), clean_item(row["positive"]), negative)
                for row, negative in zip(inputs, candidates.pop("negative_products"), strict=True)
            ]
            candidates["direct_row"] = torch.arange(len(inputs), device=candidates["positive_keys"].device)
        else:
            candidates.pop("negative_products")
        self._pending_candidates = candidates
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        for row in inputs:
            row.pop("retrieval_rank"), row.pop("num_candidates")
        return rewards

    @torch.no_grad()
    def _embed_candidates(self, inputs) -> dict[str, torch.Tensor]:
        """Direct-mode embeddings of each row's positive and first hard negative (the positive again when the row has
        none; the loss masks it by key). Each distinct product is embedded once."""
        positives = [clean_item(row["positive"]) for row in inputs]
        negatives = [
            (clean_item(row.get("negatives") or []) or [positive])[0]
            for row, positive in zip(inputs, positives, strict=True)
        ]
        keys = [product_key(product) for product in positives + negatives]
        unique = dict(zip(keys, positives + negatives, strict=True))
        model = self.accelerator.unwrap_model(self.model)
        batch = self.processing_class(products=list(unique.values()), mode="direct").to(self.accelerator.device)
        embeddings = model(**batch, return_embeddings=True).embeddings  # (U, E)
        index = {key: i for i, key in enumerate(unique)}
        rows = torch.tensor([index[key] for key in keys], device=embeddings.device)
        key_tensor = torch.tensor(keys, dtype=torch.long, device=embeddings.device)
        half = len(positives)
        return {
            "positive_embeddings": embeddings[rows[:half]],
            "negative_embeddings": embeddings[rows[half:]],
            "positive_keys": key_tensor[:half],
            "negative_keys": key_tensor[half:],
            "negative_products": negatives,  # a list (not passed on to TRL): the direct-mode term's documents
        }

    def _retrieval_ranks(self, completion_embeddings, candidates) -> tuple[list[int], int]:
        """1-based rank of each row's positive among the distinct candidates of all processes, and their count."""
        keys = gather_no_grad(torch.cat([candidates["positive_keys"], candidates["negative_keys"]]))  # (W * 2B,)
        docs = gather_no_grad(torch.cat([candidates["positive_embeddings"], candidates["negative_embeddings"]]))
        first = {key: i for i, key in reversed(list(enumerate(keys.tolist())))}  # key -> its first row
        distinct = sorted(first.values())
        column = {row: c for c, row in enumerate(distinct)}
        scores = completion_embeddings.float() @ docs[torch.tensor(distinct, device=docs.device)].float().T  # (B, U)
        positive_column = torch.tensor(
            [column[first[key]] for key in candidates["positive_keys"].tolist()], device=docs.device
        )
        positive_scores = scores.gather(1, positive_column.unsqueeze(1))  # (B, 1)
        ranks = (scores > positive_scores).sum(dim=1) + 1  # (B,)
        return ranks.tolist(), len(distinct)
