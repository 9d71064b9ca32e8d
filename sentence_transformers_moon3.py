"""sentence-transformers input module for MOON3: `SentenceTransformer(repo, trust_remote_code=True).encode(...)`.

The stock `Transformer` module cannot do what MOON3 needs: product records (title + attributes + images) are not a
sentence-transformers modality, queries and products must be routed to the processor's own instructions (which it
applies as the system turn, so nothing may be prepended to the text), and the reasoning mode generates text before
it embeds. This module hands every input to [`Moon3Processor`] and [`Moon3Model`] unchanged, so its output equals
`Moon3Model.encode` (see `tests/test_sentence_transformers.py`).

Inputs (mixed freely in one batch):

- `str`: text, unless it ends with an image extension (.jpg, .jpeg, .png, .gif, .bmp, .tif, .tiff, .webp) and names
  an existing file, in which case it is an image. A string that ends with such an extension but names no file
  raises an error (wrap it as `{"text": ...}` to embed it as text); so does an http(s) image URL (download it first).
- `PIL.Image.Image`, `pathlib.Path`, `bytes`: an image.
- `{"text": ..., "image": ...}` (or `"images": [...]`, and an optional `"id"`): text and/or image(s).
- product records `{"title", "attributes", "images", "description", "id"}`, as `processor(products=...)` takes them.

These are the rules of `Moon3Processor.as_item`, which `Moon3Model.encode` applies too: an input means the same in
both APIs (an image-path string is an image in both), and a single input (not in a list) is one item in both.
`truncate_dim` must be an int in [1, embedding_dim]; anything else is refused before the batch runs.

Instructions: `encode_query` embeds every input as a query (processor's `query_instruction`), `encode_document` as a
product (`product_instruction`; a plain string becomes the title, a `{"text", "image"}` dict becomes title + images).
Plain `encode` without a prompt embeds product records as products and everything else as queries. The prompts in
`config_sentence_transformers.json` are the processor's instructions, written by `write_st_files`; a `prompt` that
differs from them replaces the instruction for that call.

Extra `encode` keyword arguments: `mode="direct"` (one forward, default) or `mode="reason"` (generate the reasoning,
then embed), and `max_reasoning_tokens`. With `output_value=None` each result is a dict holding `sentence_embedding`
and, in reason mode, `reasoning_ids`; [`Moon3SentenceTransformer.decode_reasoning`] turns those into strings.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from sentence_transformers.base.modules.input_module import InputModule
from transformers.utils import logging

logger = logging.get_logger(__name__)

MODES = ("direct", "reason")
KINDS = ("query", "document")

# Written into config_sentence_transformers.json: the versions this module is tested with.
ST_REQUIREMENTS = {
    "sentence_transformers": {
        "specifier": ">=6.2,<7",
        "reason": "the MOON3 module uses the sentence-transformers 6 module API (InputModule, forward_kwargs)",
    },
    "transformers": {"specifier": ">=5.24,<6", "reason": "MOON3's model code targets transformers 5"},
}
ST_MODULE_CLASS = "sentence_transformers_moon3.Moon3SentenceTransformer"


def st_files(product_instruction: str, query_instruction: str, default_mode: str = "direct") -> dict[str, Any]:
    """The sentence-transformers files of a MOON3 checkpoint, as `{file name: JSON content}`.

    The prompts are the processor's own instructions, so that `encode_query` / `encode_document` pick the
    matching instruction (the module applies it as the system turn; nothing is prepended to the text).
    """
    import sentence_transformers
    import transformers

    return {
        "modules.json": [{"idx": 0, "name": "0", "path": "", "type": ST_MODULE_CLASS}],
        "config_sentence_transformers.json": {
            "model_type": "SentenceTransformer",
            "__version__": {
                "sentence_transformers": sentence_transformers.__version__,
                "transformers": transformers.__version__,
                "pytorch": torch.__version__,
            },
            "prompts": {"query": query_instruction, "document": product_instruction},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
            "requirements": ST_REQUIREMENTS,
        },
        "sentence_bert_config.json": {"default_mode": default_mode, "max_reasoning_tokens": None},
    }


class Moon3SentenceTransformer(InputModule):
    r"""
    Input module that embeds strings, images, `{"text", "image"}` dicts and product records with a MOON3 checkpoint.

    Args:
        model (`Moon3Model`): the MOON3 model.
        processor (`Moon3Processor`): its processor (owns the instructions and the chat template).
        default_mode (`str`, *optional*, defaults to `"direct"`): mode used when `encode` gets no `mode`.
        max_reasoning_tokens (`int`, *optional*): reasoning budget in reason mode; `None` uses the model config's.

    Example:

    ```python
    >>> from sentence_transformers import SentenceTransformer
    >>> model = SentenceTransformer("org/moon3", trust_remote_code=True)
    >>> products = [{"title": "Slim fit navy shirt", "attributes": {"colour": "Navy Blue"}, "images": ["shirt.jpg"]}]
    >>> doc_embeddings = model.encode_document(products)  # (1, E)
    >>> query_embeddings = model.encode_query(["men navy shirts", "query.jpg"])  # text and an image path
    >>> scores = model.similarity(query_embeddings, doc_embeddings)
    ```
    """

    config_file_name = "sentence_bert_config.json"
    config_keys = ["default_mode", "max_reasoning_tokens"]
    save_in_root = True
    forward_kwargs = {"task", "mode", "max_reasoning_tokens"}

    def __init__(self, model, processor, default_mode: str = "direct", max_reasoning_tokens: int | None = None):
        super().__init__()
        if default_mode not in MODES:
            raise ValueError(f"default_mode must be one of {list(MODES)}, got {default_mode!r}.")
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.default_mode = default_mode
        self.max_reasoning_tokens = max_reasoning_tokens

    @property
    def modalities(self) -> list:
        return ["text", "image", "message", ("image", "text")]

    def get_embedding_dimension(self) -> int:
        return self.model.config.embedding_dim

    # ------------------------------------------------------------------ preprocess

    def preprocess(
        self,
        inputs: Sequence[Any],
        prompt: str | None = None,
        task: str | None = None,
        mode: str | None = None,
        max_reasoning_tokens: int | None = None,
        **kwargs,
    ) -> dict[str, Any]:
        """Render each input with the processor's chat template and tokenise the batch (left-padded).

        The kind of each input (query or document) comes from `task` (`encode_query` / `encode_document`), else
        from `prompt` when it is one of the processor's instructions, else from the input itself (product records
        are documents, everything else is a query).
        """
        if kwargs.get("processing_kwargs"):
            raise ValueError(
                "processing_kwargs is not supported by the MOON3 module; set the processor's attributes instead "
                "(e.g. model.processor.max_text_tokens = 512)."
            )
        mode = self._resolve_mode(mode)
        self._check_truncate_dim(_caller_truncate_dim())
        if task is not None and task not in KINDS:
            raise ValueError(f"task must be one of {list(KINDS)} or None, got {task!r}.")
        kind = task or self._kind_of_prompt(prompt)
        texts, images = [], []
        for item in inputs:
            try:
                item_kind, item = self.processor.as_item(item, kind)
                processor = self._processor_for(item_kind, prompt)
                item_texts, item_images = processor.render([item], kind=item_kind, mode=mode, start_index=None)
            except (ValueError, TypeError) as error:
                raise type(error)(f"MOON3 cannot encode the input {_describe(item)}: {error}") from error
            texts.extend(item_texts)
            images.extend(item_images)
        batch = self.processor(
            text=texts, images=images or None, padding=True, padding_side="left", return_tensors="pt"
        )
        features = dict(batch)
        features["moon3_mode"] = mode
        return features

    def _resolve_mode(self, mode: str | None) -> str:
        mode = self.default_mode if mode is None else mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}. Use mode='reason' to reason first.")
        return mode

    def _kind_of_prompt(self, prompt: str | None) -> str | None:
        if prompt == self.processor.query_instruction:
            return "query"
        if prompt == self.processor.product_instruction:
            return "document"
        return None

    def _processor_for(self, kind: str, prompt: str | None):
        """The processor, or a shallow copy whose instruction for `kind` is `prompt` (a custom instruction)."""
        attribute = "query_instruction" if kind == "query" else "product_instruction"
        if not prompt or prompt in (self.processor.query_instruction, self.processor.product_instruction):
            return self.processor
        processor = copy.copy(self.processor)
        setattr(processor, attribute, prompt)
        return processor

    def _check_truncate_dim(self, truncate_dim: Any) -> None:
        """Refuse a truncate_dim that sentence-transformers would apply silently (0, > dim, a string)."""
        if truncate_dim is None:
            return
        dim = self.get_embedding_dimension()
        if isinstance(truncate_dim, bool) or not isinstance(truncate_dim, int):
            raise TypeError(f"truncate_dim must be an int in [1, {dim}] or None, got {truncate_dim!r}.")
        if not 1 <= truncate_dim <= dim:
            raise ValueError(
                f"truncate_dim must be in [1, {dim}], got {truncate_dim}; trained sizes are "
                f"{self.model.config.matryoshka_dims}."
            )

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        features: dict[str, Any],
        task: str | None = None,
        mode: str | None = None,
        max_reasoning_tokens: int | None = None,
        **kwargs,
    ) -> dict[str, Any]:
        """Embed a preprocessed batch: one forward (direct mode) or generation + one cached step (reason mode).

        Returns a dict with `sentence_embedding` (Tensor[B, E], unit norm) and, in reason mode, `reasoning_ids`
        (Tensor[B, T], padded with the pad token).
        """
        features = dict(features)
        batch_mode = self._resolve_mode(features.pop("moon3_mode", mode))
        if "pixel_values" in features:
            features["pixel_values"] = features["pixel_values"].to(self.model.dtype)
        if batch_mode == "reason":
            budget = max_reasoning_tokens if max_reasoning_tokens is not None else self.max_reasoning_tokens
            result = self.model.embed_with_reasoning(**features, max_reasoning_tokens=budget)
            return {"sentence_embedding": result["embeddings"], "reasoning_ids": result["reasoning_ids"]}
        outputs = self.model(**features, return_embeddings=True)
        return {"sentence_embedding": outputs.embeddings}

    def decode_reasoning(self, outputs: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> list[str] | str:
        """Reasoning strings from `encode(..., mode="reason", output_value=None)` results (one dict or a list)."""
        if isinstance(outputs, Mapping):
            return self.decode_reasoning([outputs])[0]
        missing = [index for index, output in enumerate(outputs) if "reasoning_ids" not in output]
        if missing:
            raise ValueError(
                f"outputs {missing[:5]} hold no 'reasoning_ids'. Encode with mode='reason' and output_value=None."
            )
        return [self.processor.decode(output["reasoning_ids"], skip_special_tokens=True) for output in outputs]

    # ------------------------------------------------------------------ save / load

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        # A model built in Python (not loaded with trust_remote_code) has no auto classes yet: without them
        # config.json gets no auto_map, the code files are not copied, and the saved folder cannot be loaded back.
        type(self.model.config).register_for_auto_class()
        type(self.model).register_for_auto_class("AutoModel")
        type(self.processor).register_for_auto_class()
        self.model.save_pretrained(output_path, safe_serialization=safe_serialization)
        self.processor.save_pretrained(output_path)
        self.save_config(output_path)
        _add_requirements(Path(output_path) / "config_sentence_transformers.json")

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        config_kwargs: dict[str, Any] | None = None,
        backend: str = "torch",
        **kwargs,
    ) -> Moon3SentenceTransformer:
        from transformers import AutoModel, AutoProcessor

        if backend != "torch":
            raise ValueError(f"The MOON3 module supports backend='torch' only, got {backend!r}.")
        hub_kwargs = {
            "subfolder": subfolder,
            "token": token,
            "cache_dir": cache_folder,
            "revision": revision,
            "local_files_only": local_files_only,
            # Loading this module already required trust_remote_code=True; the model and processor are MOON3 code.
            "trust_remote_code": True,
        }
        model = AutoModel.from_pretrained(model_name_or_path, **hub_kwargs, **(model_kwargs or {})).eval()
        processor = AutoProcessor.from_pretrained(model_name_or_path, **hub_kwargs, **(processor_kwargs or {}))
        config = cls.load_config(
            model_name_or_path,
            subfolder=subfolder,
            token=token,
            cache_folder=cache_folder,
            revision=revision,
            local_files_only=local_files_only,
        )
        return cls(model, processor, **config)


def _caller_truncate_dim() -> Any:
    """The `truncate_dim` sentence-transformers' `_inference` will apply to this batch (None when not found).

    sentence-transformers slices the embeddings after the modules ran and never passes truncate_dim to them, so
    the only place to check it is its own frame. tests/test_sentence_transformers.py fails if that frame changes.
    """
    frame = sys._getframe(1)
    for _ in range(8):
        frame = frame.f_back
        if frame is None:
            return None
        if frame.f_code.co_name == "_inference" and "truncate_dim" in frame.f_locals:
            return frame.f_locals["truncate_dim"]
    return None


def _describe(item: Any) -> str:
    text = repr(item)
    return text if len(text) <= 80 else text[:77] + "..."


def _add_requirements(path: Path) -> None:
    """`SentenceTransformer.save` writes config_sentence_transformers.json without `requirements`; put them back."""
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("requirements") == ST_REQUIREMENTS:
        return
    config["requirements"] = ST_REQUIREMENTS
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


__all__ = ["Moon3SentenceTransformer", "st_files", "ST_REQUIREMENTS"]
