"""MOON3: reasoning-aware multimodal embeddings for e-commerce products (arXiv 2604.00513).

The whole forward pass lives here: a Qwen-VL-family backbone, FIRE residuals at chosen decoder layers, the
multi-head modality fusion read at `<emb>`, a projection and an L2 norm.

Shape letters: B batch, L tokens, D backbone hidden size, E embedding dim, M fused modalities, K modality tokens
of one row, N selected positions across the batch, V vocabulary.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForImageTextToText, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput, logging

from .configuration_moon3 import Moon3Config

logger = logging.get_logger(__name__)

CONTEXT_KWARG = "moon3_context"


# --------------------------------------------------------------------------- outputs and per-call state


@dataclass
class Moon3EmbeddingOutput(ModelOutput):
    r"""
    Output of [`Moon3Model.forward`].

    Args:
        embeddings (`torch.FloatTensor` of shape `(batch_size, embedding_dim)`):
            L2-normalised embeddings read at each row's last `<emb>` token (or its last token when it has none, see
            `has_emb_token`). `None` when no row holds `<emb>` and `return_embeddings` was not set, as in the
            prefill of reasoning-mode generation.
        logits (`torch.FloatTensor` of shape `(batch_size, num_kept_tokens, vocab_size)`):
            Next-token logits of the last `logits_to_keep` positions. `None` unless `logits_to_keep` or `labels`
            is given.
        loss (`torch.FloatTensor` of shape `()`):
            Next-token loss against `labels` (-100 ignored). `None` without `labels`.
        cache (`Cache`):
            The key/value cache, when `use_cache=True`.
        emb_hidden_states (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The backbone's final hidden state at `<emb>`, before fusion. `None` with `embeddings`.
        has_emb_token (`torch.BoolTensor` of shape `(batch_size,)`):
            Whether each row holds an `<emb>` token. `None` with `embeddings`.
        raw_signals (`Moon3RawSignals`):
            The raw modality signals this pass read (for a later `<emb>` step over the cache). `None` on decode
            steps.
    """

    embeddings: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    loss: torch.FloatTensor | None = None
    cache: Cache | None = None
    emb_hidden_states: torch.FloatTensor | None = None
    has_emb_token: torch.BoolTensor | None = None
    raw_signals: Moon3RawSignals | None = None


@dataclass
class Moon3RawSignals:
    """Raw per-token signals of one batch, as the fusion module reads them.

    features: Tensor[B, L, D]; image_mask / text_mask: Tensor[B, L] bool.
    """

    features: torch.Tensor
    image_mask: torch.Tensor
    text_mask: torch.Tensor


class Moon3LayerContext:
    """Per-forward state handed to the decoder-layer hooks through the backbone's `**kwargs`.

    It travels as a keyword argument, so gradient checkpointing replays it on recomputation.
    """

    def __init__(self, fire_features: torch.Tensor | None, fire_mask: torch.Tensor | None, capture_layer: int | None):
        self.fire_features = fire_features  # (N, D) raw features at the FIRE positions
        self.fire_mask = fire_mask  # (B, L)
        self.capture_layer = capture_layer  # decoder layer whose output the fusion reads, or None
        self.captured: torch.Tensor | None = None  # (B, L, D)


# --------------------------------------------------------------------------- building blocks


class Moon3RMSNorm(nn.Module):
    """Root-mean-square layer norm with a learned scale."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        hidden_states = hidden_states.float()
        hidden_states = hidden_states * torch.rsqrt(hidden_states.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * hidden_states.to(dtype)


class Moon3FireBlock(nn.Module):
    """Fine-grained residual enhancement (FIRE) for one decoder layer.

    `h <- h + gamma * sigmoid(gate(norm(h))) * value(norm(f))` at the selected positions, where `f` is the raw
    fine-grained feature of the same position (the visual token before the language model). Both projections are
    low rank (`fire_rank`); `gamma` starts at `fire_gate_init` (0 = the backbone's output is left unchanged).
    """

    def __init__(self, hidden_size: int, rank: int, gate_init: float):
        super().__init__()
        self.hidden_norm = Moon3RMSNorm(hidden_size)
        self.feature_norm = Moon3RMSNorm(hidden_size)
        self.gate_down = nn.Linear(hidden_size, rank, bias=False)
        self.gate_up = nn.Linear(rank, hidden_size)
        self.value_down = nn.Linear(hidden_size, rank, bias=False)
        self.value_up = nn.Linear(rank, hidden_size, bias=False)
        self.gamma = nn.Parameter(torch.full((hidden_size,), float(gate_init)))

    def forward(self, hidden: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """hidden, features: Tensor[N, D] -> refreshed hidden Tensor[N, D]."""
        gate = torch.sigmoid(self.gate_up(self.gate_down(self.hidden_norm(hidden))))  # (N, D)
        value = self.value_up(self.value_down(self.feature_norm(features.to(hidden.dtype))))  # (N, D)
        return hidden + self.gamma * gate * value

    def layer_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """Forward hook on a decoder layer: apply FIRE to its output when the call carries a context."""
        context: Moon3LayerContext | None = kwargs.get(CONTEXT_KWARG)
        if context is None or context.fire_mask is None:
            return None
        hidden = output[0] if isinstance(output, tuple) else output  # (B, L, D)
        if hidden.shape[:2] != context.fire_mask.shape:
            return None
        mask = context.fire_mask
        # float32 blocks (trained in full precision over a bfloat16 base, as under LoRA) return float32
        refreshed = self(hidden[mask], context.fire_features).to(hidden.dtype)  # (N, D)
        hidden = hidden.masked_scatter(mask.unsqueeze(-1), refreshed)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def capture_layer_hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    """Forward hook that stores a decoder layer's output for the fusion module (`fusion_source_layer > 0`)."""
    context: Moon3LayerContext | None = kwargs.get(CONTEXT_KWARG)
    if context is not None and context.capture_layer is not None and module.moon3_layer_index == context.capture_layer:
        context.captured = output[0] if isinstance(output, tuple) else output


def pack_by_mask(features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather each row's masked positions to the front, keeping their order.

    features: Tensor[B, L, D], mask: Tensor[B, L] -> (Tensor[B, K, D], Tensor[B, K] bool), K = max count per row
    (at least 1, so that attention always has a key).
    """
    counts = mask.sum(dim=1)  # (B,)
    width = max(int(counts.max()), 1) if mask.numel() else 1
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]  # (B, K)
    packed = features.gather(1, order.unsqueeze(-1).expand(-1, -1, features.shape[-1]))  # (B, K, D)
    packed_mask = torch.arange(width, device=mask.device).unsqueeze(0) < counts.unsqueeze(1)  # (B, K)
    return packed, packed_mask


class Moon3ModalityAttention(nn.Module):
    """One fusion block: the `<emb>` state queries one modality's raw tokens with multi-head cross-attention."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.query_norm = Moon3RMSNorm(hidden_size)
        self.key_norm = Moon3RMSNorm(hidden_size)
        self.attention = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)

    def forward(self, query: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """query: Tensor[B, D], tokens: Tensor[B, K, D], token_mask: Tensor[B, K] -> summary Tensor[B, D]."""
        # A row without tokens of this modality attends to its first (padding) slot; its gate is zeroed by the
        # caller. Keeping the block in the graph lets DDP see every parameter used on every step.
        safe_mask = token_mask.clone()
        safe_mask[:, 0] |= ~token_mask.any(dim=1)
        keys = self.key_norm(tokens)
        summary, _ = self.attention(
            self.query_norm(query).unsqueeze(1), keys, keys, key_padding_mask=~safe_mask, need_weights=False
        )  # (B, 1, D)
        return summary.squeeze(1)


class Moon3ModalityFusion(nn.Module):
    """Multi-head modality fusion: `e + out(sum_m gate_m(e) * attend(e, raw_m))`, with `out` zero-initialised.

    Long reasoning dilutes attention to the raw input; this block lets the `<emb>` state look at the raw visual and
    title/attribute tokens again. A gate computed from `e` weighs each modality's summary, and is zero where a
    modality is absent.
    """

    def __init__(self, hidden_size: int, num_heads: int, modalities: Sequence[str]):
        super().__init__()
        self.modalities = list(modalities)
        self.blocks = nn.ModuleDict({name: Moon3ModalityAttention(hidden_size, num_heads) for name in self.modalities})
        self.gate = nn.Linear(hidden_size, len(self.modalities))
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj.zero_init = True  # a fresh model embeds exactly as the backbone does

    def forward(self, emb_states: torch.Tensor, signals: Moon3RawSignals) -> torch.Tensor:
        """emb_states: Tensor[B, D] -> fused Tensor[B, D]."""
        gates = torch.sigmoid(self.gate(emb_states))  # (B, M)
        fused = torch.zeros_like(emb_states)
        for index, name in enumerate(self.modalities):
            mask = signals.image_mask if name == "image" else signals.text_mask
            tokens, token_mask = pack_by_mask(signals.features.to(emb_states.dtype), mask)  # (B, K, D), (B, K)
            summary = self.blocks[name](emb_states, tokens, token_mask)  # (B, D)
            present = token_mask.any(dim=1, keepdim=True).to(emb_states.dtype)  # (B, 1)
            fused = fused + gates[:, index : index + 1] * present * summary
        return emb_states + self.out_proj(fused)


class Moon3ProjectionHead(nn.Module):
    """Linear map from the fused `<emb>` state to the embedding, then L2 norm."""

    def __init__(self, hidden_size: int, embedding_dim: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, embedding_dim)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """states: Tensor[B, D] -> Tensor[B, E], unit length."""
        return F.normalize(self.proj(states).float(), dim=-1)


# --------------------------------------------------------------------------- the model


class Moon3PreTrainedModel(PreTrainedModel):
    config_class = Moon3Config
    config: Moon3Config
    base_model_prefix = "moon3"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _no_split_modules = [
        "Qwen3VLTextDecoderLayer",
        "Qwen3VLVisionBlock",
        "Qwen2_5_VLDecoderLayer",
        "Qwen2_5_VLVisionBlock",
    ]

    def _init_weights(self, module: nn.Module) -> None:
        # Children are initialised before their parents and each parameter only once, so zero-initialised layers
        # are marked on the layer itself (`zero_init`) rather than handled from the parent module.
        if isinstance(module, nn.Linear) and getattr(module, "zero_init", False):
            init.zeros_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, Moon3FireBlock):
            init.constant_(module.gamma, self.config.fire_gate_init)
        elif isinstance(module, Moon3RMSNorm):
            init.ones_(module.weight)
        else:
            super()._init_weights(module)


def check_single_device_map(device_map) -> None:
    """Refuse a `device_map` that may spread MOON3 over several devices ("auto", "balanced", "sequential", or a dict
    naming more than one device): FIRE blocks run inside their decoder layer's forward hook and the fusion module reads
    the prompt's raw signals, so they must share the backbone's device, which a split map does not guarantee."""
    devices = set(map(str, device_map.values())) if isinstance(device_map, dict) else {str(device_map)}
    if device_map is not None and (len(devices) > 1 or devices & {"auto", "balanced", "balanced_low_0", "sequential"}):
        raise ValueError(
            f"device_map={device_map!r} may place MOON3 on several devices, and its FIRE blocks (run inside their "
            "decoder layer's forward hook) and fusion module must share the backbone's device. Load on one device "
            "(device_map='cuda:0' or 'cpu'); to shard a model too big for one GPU, train with DeepSpeed ZeRO-3 "
            "(train/accelerate/zero3.yaml)."
        )


class Moon3Model(Moon3PreTrainedModel, GenerationMixin):
    r"""
    MOON3 embedding model over a Qwen3-VL or Qwen2.5-VL backbone.

    One forward pass gives both the next-token logits (for reasoning and RL) and the embedding at `<emb>`.
    Direct mode (prompt ends with `<think></think><emb>`) is one forward; reasoning mode generates the reasoning,
    then takes one more decode step over the cache for `<emb>` ([`~Moon3Model.embed_with_reasoning`]).

    Example:

    ```python
    >>> from transformers import AutoModel, AutoProcessor
    >>> processor = AutoProcessor.from_pretrained("org/moon3", trust_remote_code=True)
    >>> model = AutoModel.from_pretrained("org/moon3", trust_remote_code=True)
    >>> products = [{"title": "Slim fit navy shirt", "attributes": {"colour": "Navy Blue"}, "images": ["shirt.jpg"]}]
    >>> doc_embeddings = model.encode(products, processor, kind="document")  # (1, E)
    >>> query_embeddings = model.encode(["men navy shirts"], processor, kind="query")
    >>> scores = query_embeddings @ doc_embeddings.T
    ```
    """

    def __init__(self, config: Moon3Config):
        super().__init__(config)
        self.backbone = AutoModelForImageTextToText.from_config(config.vlm_config)
        hidden_size = config.hidden_size
        self.fusion = (
            Moon3ModalityFusion(hidden_size, config.fusion_num_heads, config.fusion_modalities)
            if config.use_fusion
            else None
        )
        self.fire = (
            nn.ModuleDict(
                {
                    str(layer): Moon3FireBlock(hidden_size, config.fire_rank, config.fire_gate_init)
                    for layer in config.fire_layers
                }
            )
            if config.use_fire
            else None
        )
        self.head = Moon3ProjectionHead(hidden_size, config.embedding_dim)
        self._register_layer_hooks()
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        check_single_device_map(kwargs.get("device_map"))
        return super().from_pretrained(*args, **kwargs)

    # ----- plumbing the backbone exposes

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.backbone.model.language_model.layers

    def _register_layer_hooks(self) -> None:
        for index, layer in enumerate(self.decoder_layers):
            layer.moon3_layer_index = index
        if self.fire is not None:
            for layer_index in self.fire:
                hook = functools.partial(self._fire_layer_hook, layer_index)
                self.decoder_layers[int(layer_index)].register_forward_hook(hook, with_kwargs=True)
        if self.fusion is not None and self.config.fusion_source_layer > 0:
            self.decoder_layers[self.config.fusion_source_layer - 1].register_forward_hook(
                capture_layer_hook, with_kwargs=True
            )

    def _fire_layer_hook(self, layer_index: str, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        # The block is looked up on every call, so that a wrapper replacing it (PEFT's modules_to_save) is what runs.
        return Moon3FireBlock.layer_hook(self.fire[layer_index], module, args, kwargs, output)

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.backbone.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.backbone.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.backbone.set_output_embeddings(value)

    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        # M-RoPE positions for images come from the backbone's own rule.
        return self.backbone._prepare_position_ids_for_generation(inputs_tensor, model_kwargs)

    # ----- forward

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor | None = None,
        return_embeddings: bool | None = None,
        raw_signals: Moon3RawSignals | None = None,
        raw_signals_sink: list | None = None,
        **kwargs,
    ) -> Moon3EmbeddingOutput:
        r"""
        Run the backbone once and read the embedding at `<emb>`.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                Token ids from [`Moon3Processor`], left-padded.
            attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`):
                1 for real tokens, 0 for padding.
            pixel_values (`torch.FloatTensor` of shape `(num_patches, C * T * P * P)`):
                Flattened image patches of every image in the batch.
            image_grid_thw (`torch.LongTensor` of shape `(num_images, 3)`):
                Temporal, height and width patch counts of each image.
            mm_token_type_ids (`torch.IntTensor` of shape `(batch_size, sequence_length)`):
                1 at image tokens, 0 elsewhere (the processor returns it; M-RoPE needs it).
            logits_to_keep (`int` or `torch.Tensor`, *optional*):
                Compute logits for the last `logits_to_keep` positions (0 = all). `None` (default) computes no
                logits, which is what plain embedding wants; `generate` and TRL set it.
            return_embeddings (`bool`, *optional*):
                Force (`True`) or skip (`False`) the embedding. By default it is computed when a row holds `<emb>`.
            raw_signals (`Moon3RawSignals`, *optional*):
                Raw signals of the prompt, for an `<emb>` step that runs over a cache (reasoning mode).
            raw_signals_sink (`list`, *optional*):
                If given, the raw signals of a prefill are appended to it, so that a caller of `generate` can keep
                them for the final `<emb>` step.
        """
        if input_ids is None or kwargs.get("inputs_embeds") is not None:
            raise ValueError(
                "Moon3Model.forward needs input_ids (from Moon3Processor) and does not take inputs_embeds: the "
                "fusion and FIRE modules find the image and text positions from the ids."
            )
        kwargs.pop("inputs_embeds", None)
        past_length = cache.get_seq_length() if cache is not None else 0
        # Our own bookkeeping needs a mask over this call's tokens; the backbone gets the caller's mask as it came.
        token_mask = (
            attention_mask[:, -input_ids.shape[1] :] if attention_mask is not None else torch.ones_like(input_ids)
        )
        self._check_image_inputs(input_ids, pixel_values, image_grid_thw, past_length)

        image_outputs = idle_vision = None
        if pixel_values is not None:
            image_outputs = self.backbone.model.get_image_features(pixel_values, image_grid_thw, return_dict=True)
        elif past_length == 0 and self._vision_tower_is_partitioned():
            idle_vision = self._idle_vision_pass(input_ids.device)
        needs_signals = past_length == 0 and (self.fusion is not None or self.fire is not None)
        signals = self._raw_signals(input_ids, token_mask, image_outputs) if needs_signals else None
        if raw_signals_sink is not None and signals is not None:
            raw_signals_sink.append(signals)
        context = self._layer_context(signals)
        if position_ids is None and pixel_values is None and past_length == 0:
            # Text-only prefill: count positions from the first real token so that left padding changes nothing.
            position_ids = (token_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)

        backbone_kwargs = {CONTEXT_KWARG: context} if context is not None else {}
        outputs = self.backbone.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            image_grid_thw=image_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            mm_encoder_outputs={"image": image_outputs} if image_outputs is not None else None,
            use_cache=use_cache,
            **backbone_kwargs,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state  # (B, L, D)
        if idle_vision is not None:
            hidden_states = hidden_states + 0.0 * idle_vision  # the vision tower takes part in the backward too
        if context is not None and context.captured is not None:
            signals.features = context.captured

        logits = loss = None
        if logits_to_keep is not None or labels is not None:
            keep = 0 if logits_to_keep is None else logits_to_keep
            kept = hidden_states[:, -keep:, :] if isinstance(keep, int) else hidden_states[:, keep, :]
            logits = self.backbone.lm_head(kept)  # (B, K, V)
            if labels is not None:
                loss = self.loss_function(logits=logits, labels=labels, vocab_size=logits.shape[-1])

        embeddings = emb_states = has_emb = None
        emb_positions, has_emb = self._emb_positions(input_ids, token_mask)
        # A cached decode step sees only new tokens; it can embed only when the caller hands over the prompt's raw
        # signals (as embed_with_reasoning does). Otherwise a row that emits <emb> mid-generation would fail here.
        can_embed_by_default = past_length == 0 or raw_signals is not None or self.fusion is None
        if return_embeddings or (return_embeddings is None and can_embed_by_default and bool(has_emb.any())):
            rows = torch.arange(input_ids.shape[0], device=input_ids.device)
            emb_states = hidden_states[rows, emb_positions]  # (B, D)
            embeddings = self.embed_states(emb_states, raw_signals if raw_signals is not None else signals)
        else:
            has_emb = None
        return Moon3EmbeddingOutput(
            embeddings=embeddings,
            logits=logits,
            loss=loss,
            cache=outputs.cache if use_cache is not False else None,
            emb_hidden_states=emb_states,
            has_emb_token=has_emb,
            raw_signals=signals,
        )

    def _vision_tower_is_partitioned(self) -> bool:
        # DeepSpeed ZeRO-3 marks the parameters it partitions with `ds_id`.
        return hasattr(next(self.backbone.model.visual.parameters()), "ds_id")

    def _idle_vision_pass(self, device) -> torch.Tensor:
        """Run the vision tower on one blank minimal image and return a scalar (0-d) of its outputs.

        Under ZeRO-3 every module's forward all-gathers its parameters with all processes: a text-only batch on one
        process and images on another would otherwise call different collectives and hang."""
        vision = self.config.vlm_config.vision_config
        merge = vision.spatial_merge_size
        patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
        dtype = next(self.backbone.model.visual.parameters()).dtype
        pixel_values = torch.zeros(merge * merge, patch_dim, device=device, dtype=dtype)  # (merge^2, C*T*P*P)
        grid = torch.tensor([[1, merge, merge]], device=device)
        outputs = self.backbone.model.get_image_features(pixel_values, grid, return_dict=True)
        parts = [*outputs.pooler_output, *[f for level in (outputs.get("deepstack_features") or []) for f in level]]
        return sum(part.float().sum() for part in parts)

    def embed_states(self, emb_states: torch.Tensor, signals: Moon3RawSignals | None) -> torch.Tensor:
        """`<emb>` hidden states Tensor[B, D] -> embeddings Tensor[B, E] (fusion, projection, L2 norm)."""
        if self.fusion is not None:
            if signals is None:
                raise ValueError(
                    "The fusion module needs the prompt's raw signals, but this forward ran over a cache without "
                    "them. Pass raw_signals=<the prefill output's raw_signals> (embed_with_reasoning does this)."
                )
            emb_states = self.fusion(emb_states, signals)
        return self.head(emb_states)

    # ----- helpers of forward

    def _check_image_inputs(self, input_ids, pixel_values, image_grid_thw, past_length: int) -> None:
        num_image_tokens = int((input_ids == self.config.image_token_id).sum())
        if pixel_values is None:
            if num_image_tokens and past_length == 0:
                raise ValueError(
                    f"input_ids hold {num_image_tokens} image tokens but pixel_values is None. Pass the "
                    "processor's pixel_values and image_grid_thw."
                )
            return
        if image_grid_thw is None:
            raise ValueError("pixel_values was given without image_grid_thw; pass both from the processor.")
        merge = self.config.vlm_config.vision_config.spatial_merge_size
        expected = int((image_grid_thw.prod(-1) // merge**2).sum())
        if expected != num_image_tokens:
            raise ValueError(
                f"Image features and image tokens do not match: tokens {num_image_tokens}, features {expected}. "
                "Build input_ids and pixel_values in one processor call."
            )

    def _raw_signals(self, input_ids, attention_mask, image_outputs) -> Moon3RawSignals:
        """Raw signals as they enter the language model: token embeddings with the visual tokens scattered in."""
        features = self.get_input_embeddings()(input_ids)  # (B, L, D)
        image_mask = input_ids == self.config.image_token_id  # (B, L)
        if image_outputs is not None:
            image_embeds = torch.cat(image_outputs.pooler_output, dim=0).to(features.dtype)  # (num_image_tokens, D)
            features = features.masked_scatter(image_mask.unsqueeze(-1), image_embeds)
        text_mask = self._user_text_mask(input_ids, attention_mask)
        return Moon3RawSignals(features=features, image_mask=image_mask, text_mask=text_mask)

    def _user_text_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Tensor[B, L] bool: the plain text tokens of the last user turn (title, attributes or query)."""
        config = self.config
        turn = (input_ids == config.im_start_token_id).cumsum(dim=1)  # (B, L)
        is_think = input_ids == config.think_token_id
        assistant_turn = torch.where(is_think.any(dim=1), (turn * is_think).amax(dim=1), turn.amax(dim=1))  # (B,)
        special = torch.zeros_like(input_ids, dtype=torch.bool)
        for token_id in self._special_token_ids():
            special |= input_ids == token_id
        return (turn == (assistant_turn - 1).unsqueeze(1)) & attention_mask.bool() & ~special

    def _special_token_ids(self) -> list[int]:
        vlm = self.config.vlm_config
        ids = [
            self.config.image_token_id,
            self.config.im_start_token_id,
            self.config.pad_token_id,
            getattr(vlm, "vision_start_token_id", None),
            getattr(vlm, "vision_end_token_id", None),
        ]
        return [token_id for token_id in ids if token_id is not None]

    def _layer_context(self, signals: Moon3RawSignals | None) -> Moon3LayerContext | None:
        if signals is None:
            return None
        fire_mask = fire_features = None
        if self.fire is not None:
            fire_mask = signals.image_mask | signals.text_mask if self.config.fire_on_text else signals.image_mask
            fire_features = signals.features[fire_mask]  # (N, D)
        capture = (
            self.config.fusion_source_layer - 1
            if self.fusion is not None and self.config.fusion_source_layer
            else None
        )
        return Moon3LayerContext(fire_features, fire_mask, capture)

    def _emb_positions(self, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Index of each row's last `<emb>` (else its last real token), and whether the row has one."""
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device).expand_as(input_ids)  # (B, L)
        is_emb = (input_ids == self.config.emb_token_id) & attention_mask.bool()
        last_emb = torch.where(is_emb, positions, -1).amax(dim=1)  # (B,)
        last_real = torch.where(attention_mask.bool(), positions, -1).amax(dim=1)  # (B,)
        has_emb = last_emb >= 0
        return torch.where(has_emb, last_emb, last_real.clamp(min=0)), has_emb

    # ----- inference API

    @torch.no_grad()
    def embed_with_reasoning(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        max_reasoning_tokens: int | None = None,
        do_sample: bool = False,
        **generate_kwargs,
    ) -> dict[str, torch.Tensor]:
        """Generate the reasoning, then embed at `<emb>` with ONE extra decode step over the generation's cache.

        The inputs must come from `processor(..., mode="reason")` (prompts ending with `<think>`). Rows that run
        out of `max_reasoning_tokens` get `</think>` forced before `<emb>`. The prompt is prefilled once.

        Returns:
            dict with `embeddings` (Tensor[B, E]) and `reasoning_ids` (Tensor[B, T], padded with the pad token;
            decode with `processor.batch_decode(..., skip_special_tokens=True)`).
        """
        config = self.config
        max_new = config.max_reasoning_tokens if max_reasoning_tokens is None else max_reasoning_tokens
        if max_new == 0:
            return self._embed_without_reasoning(
                input_ids, attention_mask, pixel_values, image_grid_thw, mm_token_type_ids
            )
        prompt_length = input_ids.shape[1]
        signals_sink: list[Moon3RawSignals] = []
        generated = self.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            max_new_tokens=max_new,
            eos_token_id=config.think_end_token_id,
            pad_token_id=config.pad_token_id,
            do_sample=do_sample,
            return_dict_in_generate=True,
            raw_signals_sink=signals_sink,
            **generate_kwargs,
        )
        reasoning = generated.sequences[:, prompt_length:]  # (B, T)
        surplus = generated.cache.get_seq_length() - (prompt_length + max(reasoning.shape[1] - 1, 0))
        if surplus > 0:  # synced_gpus (DeepSpeed ZeRO-3) keeps a finished process decoding: drop those positions
            generated.cache.crop(-surplus)
        tail_ids, tail_mask, reasoning_mask = self._reasoning_tail(reasoning)  # (B, 3), (B, 3), (B, T)
        # The cache holds the prompt and every generated token but the last; feed that one plus the tail.
        full_mask = torch.cat([attention_mask, reasoning_mask[:, :-1], tail_mask], dim=1)  # (B, L + T + 2)
        step = self(
            input_ids=tail_ids,
            attention_mask=full_mask,
            position_ids=self._decode_position_ids(full_mask, tail_ids.shape[1]),
            cache=generated.cache,
            use_cache=True,
            return_embeddings=True,
            raw_signals=signals_sink[0] if signals_sink else None,
        )
        reasoning = reasoning.masked_fill(~reasoning_mask.bool(), config.pad_token_id)
        return {"embeddings": step.embeddings, "reasoning_ids": reasoning}

    def _embed_without_reasoning(self, input_ids, attention_mask, pixel_values, image_grid_thw, mm_token_type_ids):
        """Reason mode with a zero token budget: close the empty reasoning and embed in one forward."""
        closing = input_ids.new_tensor([self.config.think_end_token_id, self.config.emb_token_id]).expand(
            input_ids.shape[0], -1
        )  # (B, 2)
        outputs = self(
            input_ids=torch.cat([input_ids, closing], dim=1),
            attention_mask=F.pad(attention_mask, (0, 2), value=1),
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            mm_token_type_ids=None if mm_token_type_ids is None else F.pad(mm_token_type_ids, (0, 2)),
            return_embeddings=True,
        )
        return {"embeddings": outputs.embeddings, "reasoning_ids": input_ids[:, :0]}

    def _decode_position_ids(self, full_mask: torch.Tensor, num_new: int) -> torch.Tensor:
        """Positions of the last `num_new` tokens of a cached sequence: (4, B, num_new) = text row + M-RoPE rows.

        Padding (left, or after an early `</think>`) takes no position; text after the images is shifted by the
        backbone's `rope_deltas` from the prefill, as its own decode steps are.
        """
        text_positions = (full_mask.long().cumsum(dim=1) - 1).clamp(min=0)[:, -num_new:]  # (B, n)
        deltas = self.backbone.model.rope_deltas
        rope_positions = text_positions if deltas is None else text_positions + deltas.to(text_positions.device)
        return torch.cat([text_positions.unsqueeze(0), rope_positions.unsqueeze(0).expand(3, -1, -1)], dim=0)

    def _reasoning_tail(self, reasoning: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens to feed after generation: [last generated, `</think>` if missing, `<emb>`], with their mask.

        reasoning: Tensor[B, T] -> tail ids Tensor[B, 3], tail mask Tensor[B, 3], reasoning mask Tensor[B, T].
        """
        config = self.config
        batch = reasoning.shape[0]
        is_end = reasoning == config.think_end_token_id  # (B, T)
        ended_before = is_end.long().cumsum(dim=1) - is_end.long()  # tokens after the first </think> are padding
        reasoning_mask = (ended_before == 0).long()  # (B, T)
        ended = is_end.any(dim=1)  # (B,)
        if reasoning.shape[1]:
            last = reasoning[:, -1]
            last_mask = reasoning_mask[:, -1]
        else:
            last = torch.full((batch,), config.pad_token_id, device=reasoning.device)
            last_mask = torch.zeros(batch, dtype=torch.long, device=reasoning.device)
        think_end = torch.full_like(last, config.think_end_token_id)
        emb = torch.full_like(last, config.emb_token_id)
        tail_ids = torch.stack([last, think_end, emb], dim=1)  # (B, 3)
        tail_mask = torch.stack([last_mask, (~ended).long(), torch.ones_like(last_mask)], dim=1)  # (B, 3)
        return tail_ids, tail_mask, reasoning_mask

    @torch.no_grad()
    def encode(
        self,
        items: Any,
        processor,
        kind: str = "document",
        mode: str = "direct",
        batch_size: int = 16,
        truncate_dim: int | None = None,
        return_reasoning: bool = False,
        show_progress_bar: bool = False,
    ):
        """Embed products (`kind="document"`) or queries (`kind="query"`) in batches.

        Inputs follow `Moon3Processor.as_item`, the rule `SentenceTransformer.encode` uses too: a string is text
        unless it ends with an image extension and names an existing file (then it is an image); PIL images,
        `Path`s and bytes are images; `{"text", "image"}` dicts are queries; product records are documents. With
        `kind="document"` a string or `{"text", "image"}` dict becomes a product (text as title); with
        `kind="query"` a product record is refused.

        Args:
            items: a list of inputs, or a single input (a string, dict, image), which is one item.
            processor: the checkpoint's [`Moon3Processor`].
            kind: `"document"` or `"query"`; anything else raises.
            mode: `"direct"` (one forward pass) or `"reason"` (generate the reasoning first).
            batch_size: items per forward pass (a positive int).
            truncate_dim: keep the first `truncate_dim` dimensions (a Matryoshka size) and re-normalise.
            return_reasoning: also return the generated reasoning strings (reason mode).

        Returns:
            Tensor[N, E] of unit vectors (float32, on the CPU), Tensor[E] for a single input, or
            `(embeddings, reasoning)` with `return_reasoning=True`. Errors name the item by its index in `items`.
        """
        from tqdm.auto import tqdm

        singular, items = _encode_items(items)
        self._check_encode_args(kind, mode, batch_size, truncate_dim)
        field = "products" if kind == "document" else "queries"
        items = [processor.as_item(item, kind, field=f"{field}[{index}]")[1] for index, item in enumerate(items)]
        embeddings, reasoning = [], []
        for start in tqdm(range(0, len(items), batch_size), desc=f"Encoding {kind}s", disable=not show_progress_bar):
            texts, images = processor.render(
                items[start : start + batch_size], kind=kind, mode=mode, start_index=start
            )
            batch = processor(
                text=texts, images=images or None, padding=True, padding_side="left", return_tensors="pt"
            ).to(self.device)
            if "pixel_values" in batch:
                batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
            if mode == "reason":
                result = self.embed_with_reasoning(**batch)
                embeddings.append(result["embeddings"])
                reasoning.extend(processor.batch_decode(result["reasoning_ids"], skip_special_tokens=True))
            else:
                embeddings.append(self(**batch, return_embeddings=True).embeddings)
        if not embeddings:
            out = torch.zeros(0, truncate_dim or self.config.embedding_dim)
        else:
            out = torch.cat(embeddings).float().cpu()  # (N, E)
            if truncate_dim is not None:
                out = F.normalize(out[:, :truncate_dim], dim=-1)  # (N, truncate_dim)
        if singular:
            out, reasoning = out[0], (reasoning[0] if reasoning else reasoning)
        return (out, reasoning) if return_reasoning else out

    def _check_encode_args(self, kind: Any, mode: Any, batch_size: Any, truncate_dim: Any) -> None:
        if not isinstance(kind, str) or kind not in ("document", "query"):
            raise ValueError(f"kind must be 'document' or 'query', got {kind!r}.")
        if not isinstance(mode, str) or mode not in ("direct", "reason"):
            raise ValueError(f"mode must be 'direct' or 'reason', got {mode!r}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise TypeError(f"batch_size must be a positive int, got {batch_size!r}.")
        if truncate_dim is None:
            return
        if isinstance(truncate_dim, bool) or not isinstance(truncate_dim, int):
            raise TypeError(f"truncate_dim must be an int or None, got {truncate_dim!r}.")
        if not 1 <= truncate_dim <= self.config.embedding_dim:
            raise ValueError(
                f"truncate_dim must be in [1, {self.config.embedding_dim}], got {truncate_dim}; trained sizes are "
                f"{self.config.matryoshka_dims}."
            )


def _encode_items(items: Any) -> tuple[bool, list]:
    """(whether `items` is a single input, the inputs as a list); a string or dict is one item, as in ST."""
    if items is None:
        raise TypeError("items is None. Pass a list of products or queries, or a single one.")
    if isinstance(items, (str, bytes, bytearray, Mapping)) or not isinstance(items, Iterable) or _is_image(items):
        return True, [items]
    return False, list(items)


def _is_image(value: Any) -> bool:
    return type(value).__module__.startswith("PIL.") or isinstance(value, os.PathLike)


__all__ = ["Moon3Model", "Moon3PreTrainedModel", "Moon3EmbeddingOutput", "Moon3RawSignals"]
