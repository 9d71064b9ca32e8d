"""MOON3 model configuration.

This file holds values only: no torch import, so that `AutoConfig` stays cheap.
"""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.utils import logging

SUPPORTED_VLM_TYPES = ("qwen3_vl", "qwen2_5_vl")

DEFAULT_PRODUCT_INSTRUCTION = (
    "Represent this e-commerce product for retrieval. First reason about its fine-grained attributes "
    "(category, colour, material, style, audience, use), then embed it."
)
DEFAULT_QUERY_INSTRUCTION = (
    "Represent this shopper's query for retrieving matching products. First reason about the fine-grained "
    "attributes it asks for, then embed it."
)
# The instructions belong to the processor (processor_config.json), the one place prompts are built; older
# config.json files also carried them, and those copies are dropped with a warning when such a config loads.
PROCESSOR_ONLY_KEYS = ("product_instruction", "query_instruction")

logger = logging.get_logger(__name__)


class Moon3Config(PretrainedConfig):
    r"""
    Configuration of a [`Moon3Model`]: a Qwen-VL-family backbone that reasons about product attributes, then embeds
    the item at an `<emb>` token through a multi-head modality fusion module, FIRE residuals and a projection.

    Args:
        vlm_config (`dict` or `PretrainedConfig`, *optional*):
            Config of the vision-language backbone. Its `model_type` must be one of `"qwen3_vl"` (default) or
            `"qwen2_5_vl"`. `None` builds the default `Qwen3VLConfig`.
        embedding_dim (`int`, *optional*, defaults to 512):
            Size E of the output embedding.
        matryoshka_dims (`list[int]`, *optional*, defaults to `[64, 128, 256, 512]`):
            Prefix sizes the embedding is trained to work at. Each must be <= `embedding_dim`; the last must equal
            it.
        use_fusion (`bool`, *optional*, defaults to `True`):
            Whether the `<emb>` state attends to the raw modality signals through the multi-head fusion module.
        fusion_num_heads (`int`, *optional*, defaults to 8):
            Attention heads of each fusion block. Must divide the backbone hidden size.
        fusion_modalities (`list[str]`, *optional*, defaults to `["image", "text"]`):
            Raw signals the `<emb>` state may attend to, one attention block each.
        fusion_source_layer (`int`, *optional*, defaults to 0):
            Where the raw signals are read: 0 = as they enter the language model (text embeddings and merged
            visual tokens); k > 0 = the hidden states after decoder layer k.
        use_fire (`bool`, *optional*, defaults to `True`):
            Whether the fine-grained residual enhancement (FIRE) is applied.
        fire_layers (`list[int]`, *optional*):
            Decoder layers (0-based) after which FIRE adds its residual. `None` picks every other layer, starting
            with the first.
        fire_rank (`int`, *optional*):
            Bottleneck width of the FIRE projections; `None` means a quarter of the hidden size.
        fire_on_text (`bool`, *optional*, defaults to `False`):
            Whether FIRE also refreshes the title/attribute token positions (otherwise only image positions).
        fire_gate_init (`float`, *optional*, defaults to 0.0):
            Initial value of FIRE's per-channel scale gamma. 0.0 makes a fresh model embed exactly like the
            backbone.
        think_token_id, think_end_token_id, emb_token_id (`int`, *optional*):
            Ids of `<think>`, `</think>` and `<emb>` in the tokenizer.
        image_token_id, pad_token_id, im_start_token_id (`int`, *optional*):
            Ids of `<|image_pad|>`, the padding token and `<|im_start|>`. `image_token_id` defaults to the
            backbone's.
        max_reasoning_tokens (`int`, *optional*, defaults to 128):
            Most tokens generated in reasoning mode before `</think><emb>` is forced.

    Example:

    ```python
    >>> from configuration_moon3 import Moon3Config
    >>> config = Moon3Config(embedding_dim=256, matryoshka_dims=[64, 256])
    >>> config.vlm_config.model_type
    'qwen3_vl'
    ```
    """

    model_type = "moon3"
    sub_configs_defaults = {"vlm_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen3_vl")}

    def __init__(
        self,
        vlm_config: dict | PretrainedConfig | None = None,
        embedding_dim: int = 512,
        matryoshka_dims: list[int] | tuple[int, ...] | None = (64, 128, 256, 512),
        use_fusion: bool = True,
        fusion_num_heads: int = 8,
        fusion_modalities: list[str] | tuple[str, ...] = ("image", "text"),
        fusion_source_layer: int = 0,
        use_fire: bool = True,
        fire_layers: list[int] | None = None,
        fire_rank: int | None = None,
        fire_on_text: bool = False,
        fire_gate_init: float = 0.0,
        think_token_id: int | None = None,
        think_end_token_id: int | None = None,
        emb_token_id: int | None = None,
        image_token_id: int | None = None,
        pad_token_id: int | None = None,
        im_start_token_id: int | None = None,
        max_reasoning_tokens: int = 128,
        **kwargs,
    ):
        stale = [key for key in PROCESSOR_ONLY_KEYS if kwargs.pop(key, None) is not None]
        if stale:
            logger.warning_once(
                f"Moon3Config: ignoring {stale} from the model config; the instructions are the processor's "
                "(processor_config.json). Save the checkpoint again to drop them from config.json."
            )
        self.vlm_config = _build_vlm_config(vlm_config)
        self.embedding_dim = embedding_dim
        self.matryoshka_dims = sorted(matryoshka_dims) if matryoshka_dims else [embedding_dim]
        self.use_fusion = use_fusion
        self.fusion_num_heads = fusion_num_heads
        self.fusion_modalities = list(fusion_modalities)
        self.fusion_source_layer = fusion_source_layer
        self.use_fire = use_fire
        num_layers = self.vlm_config.text_config.num_hidden_layers
        self.fire_layers = list(range(0, num_layers, 2)) if fire_layers is None else sorted(fire_layers)
        self.fire_rank = fire_rank if fire_rank is not None else max(1, self.hidden_size // 4)
        self.fire_on_text = fire_on_text
        self.fire_gate_init = fire_gate_init
        self.think_token_id = think_token_id
        self.think_end_token_id = think_end_token_id
        self.emb_token_id = emb_token_id
        self.image_token_id = image_token_id if image_token_id is not None else self.vlm_config.image_token_id
        self.im_start_token_id = im_start_token_id
        self.max_reasoning_tokens = max_reasoning_tokens
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self._check()

    @property
    def hidden_size(self) -> int:
        """Hidden size D of the backbone's language model."""
        return self.vlm_config.text_config.hidden_size

    def get_text_config(self, *args, **kwargs) -> PretrainedConfig:
        """The backbone's language-model config (what `generate` and caches size themselves by)."""
        return self.vlm_config.get_text_config(*args, **kwargs)

    def _check(self) -> None:
        """Raise a `ValueError` naming the field when values cannot work together."""
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {self.embedding_dim}.")
        bad_dims = [d for d in self.matryoshka_dims if not 1 <= d <= self.embedding_dim]
        if bad_dims:
            raise ValueError(
                f"matryoshka_dims {self.matryoshka_dims} has sizes outside [1, embedding_dim={self.embedding_dim}]: "
                f"{bad_dims}. Use prefix sizes no larger than embedding_dim."
            )
        if self.matryoshka_dims[-1] != self.embedding_dim:
            raise ValueError(
                f"The largest of matryoshka_dims {self.matryoshka_dims} must equal embedding_dim={self.embedding_dim}, "
                "so that the full embedding is trained too. Add embedding_dim to matryoshka_dims."
            )
        unknown = set(self.fusion_modalities) - {"image", "text"}
        if unknown or not self.fusion_modalities:
            raise ValueError(
                f"fusion_modalities must be a non-empty subset of ['image', 'text'], got {self.fusion_modalities}."
            )
        if self.hidden_size % self.fusion_num_heads != 0:
            raise ValueError(
                f"fusion_num_heads={self.fusion_num_heads} must divide the backbone hidden size {self.hidden_size}."
            )
        num_layers = self.vlm_config.text_config.num_hidden_layers
        if not 0 <= self.fusion_source_layer <= num_layers:
            raise ValueError(
                f"fusion_source_layer must be in [0, {num_layers}] (0 = language-model inputs), "
                f"got {self.fusion_source_layer}."
            )
        bad_layers = [layer for layer in self.fire_layers if not 0 <= layer < num_layers]
        if bad_layers:
            raise ValueError(
                f"fire_layers {self.fire_layers} has layers outside [0, {num_layers - 1}]: {bad_layers}. "
                f"The backbone has {num_layers} decoder layers."
            )
        if self.fire_rank < 1:
            raise ValueError(f"fire_rank must be >= 1, got {self.fire_rank}.")
        if self.max_reasoning_tokens < 0:
            raise ValueError(
                f"max_reasoning_tokens must be >= 0 (0 = direct mode only), got {self.max_reasoning_tokens}."
            )


def _build_vlm_config(vlm_config: dict | PretrainedConfig | None) -> PretrainedConfig:
    """Turn a dict, config or `None` into a supported backbone config, or raise naming `vlm_config`."""
    if vlm_config is None:
        vlm_config = {"model_type": "qwen3_vl"}
    if isinstance(vlm_config, dict):
        vlm_config = dict(vlm_config)
        model_type = vlm_config.pop("model_type", "qwen3_vl")
        if model_type not in SUPPORTED_VLM_TYPES:
            raise ValueError(
                f"vlm_config.model_type={model_type!r} is not supported; use one of {list(SUPPORTED_VLM_TYPES)}."
            )
        vlm_config = CONFIG_MAPPING[model_type](**vlm_config)
    if not isinstance(vlm_config, PretrainedConfig):
        raise TypeError(f"vlm_config must be a dict, a PretrainedConfig or None, got {type(vlm_config).__name__}.")
    if vlm_config.model_type not in SUPPORTED_VLM_TYPES:
        raise ValueError(
            f"vlm_config.model_type={vlm_config.model_type!r} is not supported; use one of {list(SUPPORTED_VLM_TYPES)}."
        )
    return vlm_config


__all__ = ["Moon3Config"]
