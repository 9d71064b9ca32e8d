"""MOON3 processor: the one place where product and query prompts are built, images are loaded and text is tokenised.

Two ways in:

- the item API, `processor(products=[...])` / `processor(queries=[...])`, which builds the chat prompt for each item
  (instruction, images, title, attributes, the assistant's `<think>` prefix) and tokenises the batch, left-padded;
- the standard HF API, `processor(text=[...], images=[...])` over already templated text, which TRL's GRPOTrainer
  and `generate` users call.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

from .configuration_moon3 import DEFAULT_PRODUCT_INSTRUCTION, DEFAULT_QUERY_INSTRUCTION

logger = logging.get_logger(__name__)

PRODUCT_KEYS = frozenset({"id", "title", "attributes", "description", "images", "image"})
QUERY_KEYS = frozenset({"text", "image", "images"})
MODES = ("direct", "reason")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>"
    "{% if direct_embedding %}</think><emb>{% endif %}{% endif %}"
)


class Moon3Processor(ProcessorMixin):
    r"""
    Turns products and queries into model inputs for [`Moon3Model`].

    Args:
        image_processor (`Qwen2VLImageProcessor`-like):
            The backbone's image processor (its `min_pixels`/`max_pixels` bound every image).
        tokenizer (`PreTrainedTokenizerFast`):
            Tokenizer with the Qwen-VL special tokens plus `<think>`, `</think>` and `<emb>`.
        chat_template (`str`, *optional*):
            Jinja chat template; defaults to MOON3's.
        product_instruction (`str`, *optional*):
            System instruction for products.
        query_instruction (`str`, *optional*):
            System instruction for queries.
        max_text_tokens (`int`, *optional*, defaults to 256):
            Longest item text (title, attributes, description or query) in tokens; longer text is cut, with a warning.
        max_images_per_item (`int`, *optional*, defaults to 8):
            Most images one item may carry.
        max_image_side (`int`, *optional*, defaults to 4096):
            Images with a longer side are shrunk before the image processor sees them (the image processor's
            `max_pixels` bounds the final size; this only keeps huge files cheap).

    Example:

    ```python
    >>> processor = AutoProcessor.from_pretrained("org/moon3", trust_remote_code=True)
    >>> batch = processor(products=[{"title": "Slim fit navy shirt", "attributes": {"colour": "Navy Blue"},
    ...                              "images": ["shirt.jpg"]}])
    >>> batch = processor(queries=["men navy blue casual shirts"], mode="reason")
    ```
    """

    return_mm_token_type_ids = True

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template: str | None = None,
        product_instruction: str = DEFAULT_PRODUCT_INSTRUCTION,
        query_instruction: str = DEFAULT_QUERY_INSTRUCTION,
        max_text_tokens: int = 256,
        max_images_per_item: int = 8,
        max_image_side: int = 4096,
        **kwargs,
    ):
        self.image_token = "<|image_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token) if tokenizer is not None else None
        self.product_instruction = product_instruction
        self.query_instruction = query_instruction
        self.max_text_tokens = max_text_tokens
        self.max_images_per_item = max_images_per_item
        self.max_image_side = max_image_side
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE, **kwargs)

    # ------------------------------------------------------------------ public API

    def __call__(
        self,
        images=None,
        text=None,
        *,
        products: Sequence[Mapping[str, Any]] | None = None,
        queries: Sequence[Any] | None = None,
        mode: str = "direct",
        **kwargs,
    ) -> BatchFeature:
        """Tokenise `products` or `queries` (item API) or already templated `text` with `images` (HF API).

        Returns a `BatchFeature` with `input_ids`, `attention_mask`, `mm_token_type_ids` and, when any item has an
        image, `pixel_values` and `image_grid_thw`. The item API pads on the left and returns PyTorch tensors.
        """
        if products is not None or queries is not None:
            if text is not None or images is not None:
                raise ValueError("Pass either products/queries (item API) or text/images (HF API), not both.")
            if products is not None and queries is not None:
                raise ValueError("Pass products and queries in separate calls: they use different instructions.")
            kind, items = ("document", products) if products is not None else ("query", queries)
            text, images = self.render(items, kind=kind, mode=mode)
            kwargs.setdefault("padding", True)
            kwargs.setdefault("padding_side", "left")
            kwargs.setdefault("return_tensors", "pt")
        if images is not None and len(images) == 0:
            images = None
        return super().__call__(images=images, text=text, **kwargs)

    def render(self, items: Sequence[Any], kind: str = "document", mode: str = "direct") -> tuple[list[str], list]:
        """Build the prompt text of each item and the flat list of its loaded images.

        Args:
            items: products (`kind="document"`) or queries (`kind="query"`).
            kind: `"document"` for products, `"query"` for shopper queries.
            mode: `"direct"` ends the prompt with `<think></think><emb>`; `"reason"` ends it with `<think>`.

        Returns:
            (texts, images): one prompt string per item, and the images of all items in order.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}.")
        if kind not in ("document", "query"):
            raise ValueError(f"kind must be 'document' or 'query', got {kind!r}.")
        if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
            raise TypeError(
                f"{'products' if kind == 'document' else 'queries'} must be a list of items, got "
                f"{type(items).__name__}. Wrap a single item in a list."
            )
        texts, images = [], []
        for index, item in enumerate(items):
            messages, item_images = self.build_messages(item, kind=kind, index=index)
            texts.append(
                self.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True, direct_embedding=(mode == "direct")
                )
            )
            images.extend(item_images)
        return texts, images

    def build_messages(
        self, item: Any, kind: str = "document", index: int = 0
    ) -> tuple[list[dict], list[Image.Image]]:
        """Chat messages (system instruction + user content) for one product or query, and its loaded images.

        Example:
            >>> messages, images = processor.build_messages({"title": "Red dress"}, kind="document")
            >>> messages[1]["content"]
            [{'type': 'text', 'text': 'Title: Red dress'}]
        """
        if kind == "document":
            item_text, image_sources = self._product_parts(item, index)
            field = f"products[{index}]"
            instruction = self.product_instruction
        else:
            item_text, image_sources = self._query_parts(item, index)
            field = f"queries[{index}]"
            instruction = self.query_instruction
        if len(image_sources) > self.max_images_per_item:
            raise ValueError(
                f"{field} has {len(image_sources)} images; at most max_images_per_item={self.max_images_per_item} "
                "are allowed. Pass fewer images or raise max_images_per_item on the processor."
            )
        images = [self.load_image(source, field=f"{field}.images[{i}]") for i, source in enumerate(image_sources)]
        content = [{"type": "image"} for _ in images]
        if item_text:
            content.append({"type": "text", "text": self._truncate(item_text, field)})
        messages = [
            {"role": "system", "content": instruction},
            {"role": "user", "content": content},
        ]
        return messages, images

    def format_product_text(self, product: Mapping[str, Any], index: int = 0) -> str:
        """The product's text as the model reads it: title, attributes, description, one per line."""
        return self._product_parts(product, index, load_images=False)[0]

    @staticmethod
    def format_reasoning(attributes: Mapping[str, Any], field_names: Mapping[str, str] | None = None) -> str:
        """A reasoning target written from attributes, e.g. `"articleType: Shirts; baseColour: Navy Blue."`;
        `field_names` renames keys (the catalogue's own phrasing, e.g. `{"articleType": "type"}`).

        Stage-1 SFT uses it as the text between `<think>` and `</think>`.
        """
        names = field_names or {}
        parts = [f"{names.get(key, key)}: {_value_text(value)}" for key, value in attributes.items()]
        return "; ".join(parts) + ("." if parts else "")

    def load_image(self, source: Any, field: str = "image") -> Image.Image:
        """Open a path, bytes or PIL image as an RGB PIL image, shrunk to `max_image_side`; errors name `field`."""
        if isinstance(source, Image.Image):
            image = source
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise ValueError(f"{field}: image file {str(path)!r} does not exist. Check the path.")
            image = _open_image(path, field)
        elif isinstance(source, (bytes, bytearray)):
            image = _open_image(io.BytesIO(source), field)
        else:
            raise TypeError(f"{field}: expected a path, bytes or PIL.Image.Image, got {type(source).__name__}.")
        return _to_rgb(_bounded(image, self.max_image_side, self._max_aspect_ratio()))

    def _max_aspect_ratio(self) -> float:
        """Widest aspect ratio the image processor can keep under its `max_pixels` (each side >= one merged patch)."""
        factor = self.image_processor.patch_size * self.image_processor.merge_size
        max_pixels = self.image_processor.size["longest_edge"]
        return max(1.0, min(100.0, max_pixels / factor**2))

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        """Expand one `<|image_pad|>` into one pad per merged visual token of image `image_idx`."""
        merge_length = self.image_processor.merge_size**2
        num_image_tokens = int(image_inputs["image_grid_thw"][image_idx].prod()) // merge_length
        return self.image_token * num_image_tokens

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"]

    # ------------------------------------------------------------------ item parsing

    def _product_parts(self, product: Any, index: int, load_images: bool = True) -> tuple[str, list]:
        field = f"products[{index}]"
        if not isinstance(product, Mapping):
            raise TypeError(
                f"{field} must be a dict with 'title', 'attributes', 'images' and/or 'description', "
                f"got {type(product).__name__}."
            )
        _check_keys(product, PRODUCT_KEYS, field)
        for key in ("title", "attributes", "description", "images", "image"):
            if key in product and product[key] is None:
                raise ValueError(f"{field}.{key} is None. Omit the key or give a value.")
        lines = []
        if title := _optional_text(product, "title", field):
            lines.append(f"Title: {title}")
        attributes = product.get("attributes", {})
        if not isinstance(attributes, Mapping):
            raise TypeError(f"{field}.attributes must be a dict of name -> value, got {type(attributes).__name__}.")
        attribute_parts = []
        for name, value in attributes.items():
            if value is None:
                raise ValueError(f"{field}.attributes[{name!r}] is None. Drop the attribute or give a value.")
            text = _value_text(value)
            if text:
                attribute_parts.append(f"{name}: {text}")
        if attribute_parts:
            lines.append("Attributes: " + "; ".join(attribute_parts))
        if description := _optional_text(product, "description", field):
            lines.append(f"Description: {description}")
        image_sources = _image_sources(product, field)
        if not lines and not image_sources:
            raise ValueError(
                f"{field} is empty: it needs a non-empty title, attributes, description or at least one image."
            )
        return "\n".join(lines), image_sources

    def _query_parts(self, query: Any, index: int) -> tuple[str, list]:
        field = f"queries[{index}]"
        if isinstance(query, str):
            if not query.strip():
                raise ValueError(f"{field} is an empty string. Give query text, an image, or both.")
            return query.strip(), []
        if isinstance(query, (Image.Image, bytes, bytearray, os.PathLike)):
            return "", [query]
        if not isinstance(query, Mapping):
            raise TypeError(
                f"{field} must be a string, a PIL image, bytes, a pathlib.Path or a dict with 'text' and/or "
                f"'image', got {type(query).__name__}."
            )
        _check_keys(query, QUERY_KEYS, field)
        for key in QUERY_KEYS:
            if key in query and query[key] is None:
                raise ValueError(f"{field}.{key} is None. Omit the key or give a value.")
        text = query.get("text", "")
        if not isinstance(text, str):
            raise TypeError(f"{field}.text must be a string, got {type(text).__name__}.")
        image_sources = _image_sources(query, field)
        if not text.strip() and not image_sources:
            raise ValueError(f"{field} is empty: give non-empty 'text', an 'image', or both.")
        return text.strip(), image_sources

    def _truncate(self, text: str, field: str) -> str:
        token_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(token_ids) <= self.max_text_tokens:
            return text
        logger.warning(
            f"{field}: text has {len(token_ids)} tokens; cut to max_text_tokens={self.max_text_tokens}. "
            "Raise max_text_tokens on the processor to keep more."
        )
        return self.tokenizer.decode(token_ids[: self.max_text_tokens])


def _optional_text(item: Mapping, key: str, field: str) -> str:
    """The stripped string at `item[key]` ('' when absent); a non-string raises naming `field.key`."""
    value = item.get(key, "")
    if not isinstance(value, str):
        raise TypeError(f"{field}.{key} must be a string, got {type(value).__name__}.")
    return value.strip()


def _check_keys(item: Mapping, allowed: frozenset, field: str) -> None:
    unknown = sorted(set(item) - allowed, key=str)
    if unknown:
        raise ValueError(f"{field} has unknown keys {unknown}; allowed keys are {sorted(allowed)}.")


def _image_sources(item: Mapping, field: str) -> list:
    if "image" in item and "images" in item:
        raise ValueError(f"{field} has both 'image' and 'images'; use 'images' for a list.")
    sources = item.get("images", item.get("image", []))
    if isinstance(sources, (str, bytes, bytearray, os.PathLike, Image.Image)):
        return [sources]
    if not isinstance(sources, Sequence):
        raise TypeError(f"{field}.images must be a list of paths, bytes or PIL images, got {type(sources).__name__}.")
    return list(sources)


def _value_text(value: Any) -> str:
    if isinstance(value, (list, tuple, set)):
        return ", ".join(str(v).strip() for v in value if v is not None and str(v).strip())
    return str(value).strip()


def _open_image(source, field: str) -> Image.Image:
    try:
        image = Image.open(source)
        image.load()
    except Image.DecompressionBombError as error:
        raise ValueError(f"{field}: image is too large to decode safely ({error}). Downscale it first.") from error
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        name = source if isinstance(source, Path) else "bytes"
        raise ValueError(f"{field}: cannot read image {str(name)!r} ({error}). Is the file a valid image?") from error
    return image


def _bounded(image: Image.Image, max_side: int, max_aspect: float) -> Image.Image:
    """Shrink images larger than `max_side`; pad (white, bottom/right) aspect ratios wider than `max_aspect`."""
    width, height = image.size
    if max(width, height) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        width, height = image.size
    if max(width, height) > max_aspect * min(width, height):
        side = int(max(width, height) / max_aspect) + 1
        canvas = Image.new(image.mode, (max(width, side), max(height, side)), _white(image.mode))
        canvas.paste(image, (0, 0))
        image = canvas
    return image


def _white(mode: str):
    bands = Image.getmodebands(mode)
    return (255,) * bands if bands > 1 else 255


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels become white, not black."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda value: value * (1 / 256)).convert("L")
    return image.convert("RGB")


__all__ = ["Moon3Processor"]
