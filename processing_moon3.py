"""MOON3 processor: the one place where product and query prompts are built, images are loaded and text is tokenised.

Two ways in:

- the item API, `processor(products=[...])` / `processor(queries=[...])`, which builds the chat prompt for each item
  (instruction, images, title, attributes, the assistant's `<think>` prefix) and tokenises the batch, left-padded;
- the standard HF API, `processor(text=[...], images=[...])` over already templated text, which TRL's GRPOTrainer
  and `generate` users call.
"""

from __future__ import annotations

import functools
import io
import math
import numbers
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

from .configuration_moon3 import DEFAULT_PRODUCT_INSTRUCTION, DEFAULT_QUERY_INSTRUCTION

logger = logging.get_logger(__name__)

PRODUCT_KEYS = frozenset({"id", "title", "attributes", "description", "images", "image"})
# Keys only a product record has: a dict with any of them is a product, any other dict a query.
PRODUCT_ONLY_KEYS = frozenset({"title", "attributes", "description"})
QUERY_KEYS = frozenset({"id", "text", "image", "images"})
MODES = ("direct", "reason")
KINDS = ("document", "query")
# A string ending in one of these (and naming an existing file) is an image, in every MOON3 API.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")
# The tokens MOON3's tokenizers add, in id order (train/build_tokenizer.py gives them ids 0..9); used when a
# processor has no tokenizer (format_product_text alone).
DEFAULT_ADDED_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<think>",
    "</think>",
    "<emb>",
)
# Inserted after the first character of a special-token string found in user text, so the tokenizer reads it as
# plain characters: "<emb>" in a title becomes "<\u200bemb>" (ZERO WIDTH SPACE), never the control token.
TOKEN_ESCAPE = "\u200b"

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

    def render(
        self, items: Sequence[Any], kind: str = "document", mode: str = "direct", start_index: int | None = 0
    ) -> tuple[list[str], list]:
        """Build the prompt text of each item and the flat list of its loaded images.

        Args:
            items: products (`kind="document"`) or queries (`kind="query"`).
            kind: `"document"` for products, `"query"` for shopper queries.
            mode: `"direct"` ends the prompt with `<think></think><emb>`; `"reason"` ends it with `<think>`.
            start_index: index of `items[0]` in the caller's whole input, so errors name the global item; None
                when the caller cannot know it (sentence-transformers reorders inputs): errors then name the id.

        Returns:
            (texts, images): one prompt string per item, and the images of all items in order.
        """
        check_mode(mode)
        check_kind(kind)
        if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
            raise TypeError(
                f"{'products' if kind == 'document' else 'queries'} must be a list of items, got "
                f"{type(items).__name__}. Wrap a single item in a list."
            )
        texts, images = [], []
        for offset, item in enumerate(items):
            index = None if start_index is None else start_index + offset
            messages, item_images = self.build_messages(item, kind=kind, index=index)
            texts.append(
                self.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True, direct_embedding=(mode == "direct")
                )
            )
            images.extend(item_images)
        return texts, images

    def as_item(self, item: Any, kind: str | None = None, field: str = "input") -> tuple[str, Any]:
        """(kind, item) for one input of `Moon3Model.encode` or `SentenceTransformer.encode`: one rule for both.

        - a string is text, unless it ends with an image extension and names an existing file: then it is an
          image (a missing file or an http(s) URL with such an ending raises; pass `{"text": ...}` for text);
        - a PIL image, `pathlib.Path`, bytes: an image;
        - a dict with `title`, `attributes` or `description`: a product record (a document);
        - any other dict: `{"text", "image"/"images", "id"}`, a query.

        `kind=None` keeps each input's own kind (products are documents, the rest queries). `kind="document"`
        turns a query-shaped input into a product (text becomes the title); `kind="query"` refuses product records.
        """
        if kind is not None:
            check_kind(kind)
        if item is None:
            raise ValueError(f"{field} is None. Remove it, or give a string, image, dict or product record.")
        if isinstance(item, str):
            item = self.string_input(item, field)
        if isinstance(item, Mapping):
            return self._dict_as_item(item, kind, field)
        if isinstance(item, (Image.Image, bytes, bytearray, os.PathLike)):
            return (kind or "query"), ({"images": [item]} if kind == "document" else item)
        if isinstance(item, str):
            return (kind or "query"), ({"title": item} if kind == "document" else item)
        raise TypeError(
            f"{field}: MOON3 cannot encode an input of type {type(item).__name__}. Give a string, a PIL image, an "
            "image path, bytes, a {'text': ..., 'image': ...} dict or a product record {'title', 'attributes', "
            "'images'}."
        )

    def _dict_as_item(self, item: Mapping, kind: str | None, field: str) -> tuple[str, Any]:
        keys = set(item)
        if not keys:
            raise ValueError(f"{field} is an empty dict: give 'text' and/or 'image', or a product record.")
        if keys & PRODUCT_ONLY_KEYS:
            if kind == "query":
                raise ValueError(
                    f"{field} is a product record ({_describe(item)}) passed as a query. Product records are "
                    "documents: embed them with kind='document' / encode_document."
                )
            return "document", item
        unknown = sorted(keys - QUERY_KEYS, key=str)
        if unknown:
            raise ValueError(
                f"{field} has unknown keys {unknown}. Use {{'text': ..., 'image': ...}} for queries, or a product "
                f"record with keys {sorted(PRODUCT_KEYS)}."
            )
        if kind == "document":
            product = {key: item[key] for key in ("id", "image", "images") if key in item}
            if "text" in item:
                product["title"] = item["text"]
            return "document", product
        return "query", item

    @staticmethod
    def string_input(text: str, field: str = "input") -> str | Path:
        """An image path (as a `Path`) or the text itself; see `as_item` for the rule."""
        stripped = text.strip()
        if "\n" in stripped or not stripped.lower().endswith(IMAGE_EXTENSIONS):
            return text
        if stripped.startswith(("http://", "https://")):
            raise ValueError(
                f"{field}: {stripped!r} looks like an image URL; MOON3 does not download images. Download it and "
                "pass the local path or a PIL image, or pass {'text': ...} to embed the string as text."
            )
        if os.path.isfile(stripped):
            return Path(stripped)
        raise ValueError(
            f"{field}: {stripped!r} looks like an image path, but no such file exists. Fix the path, or pass "
            "{'text': ...} to embed the string as text."
        )

    def build_messages(
        self, item: Any, kind: str = "document", index: int | None = 0
    ) -> tuple[list[dict], list[Image.Image]]:
        """Chat messages (system instruction + user content) for one product or query, and its loaded images.

        Example:
            >>> messages, images = processor.build_messages({"title": "Red dress"}, kind="document")
            >>> messages[1]["content"]
            [{'type': 'text', 'text': 'Title: Red dress'}]
        """
        check_kind(kind)
        field = _item_field(kind, index, item)
        if kind == "document":
            item_text, image_sources = self._product_parts(item, field)
            instruction = self.product_instruction
        else:
            item_text, image_sources = self._query_parts(item, field)
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

    def format_product_text(self, product: Mapping[str, Any], index: int | None = 0) -> str:
        """The product's text as the model reads it: title, attributes, description, one per line."""
        return self._product_parts(product, _item_field("document", index, product), load_images=False)[0]

    @staticmethod
    def format_reasoning(
        attributes: Mapping[str, Any], field_names: Mapping[str, str] | None = None, field: str = "attributes"
    ) -> str:
        """A reasoning target written from attributes, e.g. `"articleType: Shirts; baseColour: Navy Blue."`;
        `field_names` renames keys (the catalogue's own phrasing, e.g. `{"articleType": "type"}`).

        Stage-1 SFT uses it as the text between `<think>` and `</think>`. Values follow the attribute rules of
        `attribute_text`; special-token strings in them are escaped.
        """
        names = field_names or {}
        parts = [
            f"{names.get(key, key)}: {attribute_text(value, f'{field}[{key!r}]')}" for key, value in attributes.items()
        ]
        return escape_special_tokens("; ".join(parts) + ("." if parts else ""), DEFAULT_ADDED_TOKENS)

    def load_image(self, source: Any, field: str = "image") -> Image.Image:
        """Open a path, bytes or PIL image as the model sees it; errors name `field`.

        EXIF orientation is applied, 16-bit and float images are scaled to 8 bits (`_to_rgb`), transparent pixels
        become white, and the image is shrunk to `max_image_side`.
        """
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
        image = ImageOps.exif_transpose(image) or image
        try:
            return _to_rgb(_bounded(image, self.max_image_side, self._max_aspect_ratio()))
        except ValueError as error:
            raise ValueError(f"{field}: {error}") from error

    def special_token_strings(self) -> list[str]:
        """Every string the tokenizer reads as one added token (special or not), longest first."""
        tokenizer = getattr(self, "tokenizer", None)  # train.build_tokenizer formats text before a tokenizer exists
        if tokenizer is None:
            return sorted(DEFAULT_ADDED_TOKENS, key=len, reverse=True)
        tokens = set(tokenizer.get_added_vocab()) | set(tokenizer.all_special_tokens)
        return sorted((token for token in tokens if token), key=len, reverse=True)

    def user_text(self, value: Any, field: str) -> str:
        """Checked user text (a str of valid Unicode), stripped, with special-token strings escaped."""
        if not isinstance(value, str):
            raise TypeError(f"{field} must be a string, got {type(value).__name__}.")
        _check_unicode(value, field)
        return escape_special_tokens(value.strip(), self.special_token_strings())

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

    def _product_parts(self, product: Any, field: str, load_images: bool = True) -> tuple[str, list]:
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
        if title := self.user_text(product.get("title", ""), f"{field}.title"):
            lines.append(f"Title: {title}")
        attributes = product.get("attributes", {})
        if not isinstance(attributes, Mapping):
            raise TypeError(f"{field}.attributes must be a dict of name -> value, got {type(attributes).__name__}.")
        attribute_parts = []
        for name, value in attributes.items():
            where = f"{field}.attributes[{name!r}]"
            if not isinstance(name, str) or not name.strip():
                raise TypeError(f"{where}: attribute names must be non-empty strings, got {name!r}.")
            if value is None:
                raise ValueError(f"{where} is None. Drop the attribute or give a value.")
            text = escape_special_tokens(attribute_text(value, where), self.special_token_strings())
            if text:
                attribute_parts.append(f"{self.user_text(name, where)}: {text}")
        if attribute_parts:
            lines.append("Attributes: " + "; ".join(attribute_parts))
        if description := self.user_text(product.get("description", ""), f"{field}.description"):
            lines.append(f"Description: {description}")
        image_sources = _image_sources(product, field)
        if not lines and not image_sources:
            raise ValueError(
                f"{field} is empty: it needs a non-empty title, attributes, description or at least one image."
            )
        return "\n".join(lines), image_sources

    def _query_parts(self, query: Any, field: str) -> tuple[str, list]:
        if isinstance(query, str):
            query = self.string_input(query, field)
        if isinstance(query, str):
            if not query.strip():
                raise ValueError(f"{field} is an empty string. Give query text, an image, or both.")
            return self.user_text(query, field), []
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
        text = self.user_text(query.get("text", ""), f"{field}.text")
        image_sources = _image_sources(query, field)
        if not text and not image_sources:
            raise ValueError(f"{field} is empty: give non-empty 'text', an 'image', or both.")
        return text, image_sources

    def _truncate(self, text: str, field: str) -> str:
        token_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(token_ids) <= self.max_text_tokens:
            return text
        logger.warning(
            f"{field}: text has {len(token_ids)} tokens; cut to max_text_tokens={self.max_text_tokens}. "
            "Raise max_text_tokens on the processor to keep more."
        )
        # Decoding a prefix can end mid-escape; escape again so the cut text still holds no control token.
        return escape_special_tokens(
            self.tokenizer.decode(token_ids[: self.max_text_tokens]), self.special_token_strings()
        )


def check_mode(mode: Any) -> str:
    """`mode` itself, or a ValueError listing the modes."""
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}.")
    return mode


def check_kind(kind: Any) -> str:
    """`kind` itself, or a ValueError listing the kinds (a typo such as 'documents' must not embed as a query)."""
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}.")
    return kind


def escape_special_tokens(text: str, tokens: Sequence[str]) -> str:
    """`text` with TOKEN_ESCAPE after the first character of every special-token string, so none is a control token.

    Example:
        >>> escape_special_tokens("a <emb> b", ["<emb>"])
        'a <\u200bemb> b'
    """
    pattern = _token_pattern(tuple(tokens))
    if pattern is None or not text:
        return text
    # One pass can leave a match that straddles an inserted escape's neighbours; repeat until none is left.
    while pattern.search(text):
        text = pattern.sub(lambda match: match.group()[0] + TOKEN_ESCAPE + match.group()[1:], text)
    return text


@functools.lru_cache(maxsize=8)
def _token_pattern(tokens: tuple[str, ...]) -> re.Pattern | None:
    tokens = tuple(token for token in tokens if len(token) > 1)  # a one-character token cannot be split
    return re.compile("|".join(re.escape(token) for token in tokens)) if tokens else None


def attribute_text(value: Any, field: str) -> str:
    """The text form of one attribute value; anything but str/int/float/bool or a list of them is refused.

    str: stripped; bool: "yes" / "no"; int: decimal; float (finite): shortest repr, "42.0" written "42";
    list/tuple: the non-empty item texts joined by ", ". NaN/inf, None inside a list, sets (no order), dicts and
    nested lists raise, naming `field`.
    """
    if isinstance(value, (list, tuple)):
        texts = []
        for position, element in enumerate(value):
            if isinstance(element, (list, tuple)):
                raise TypeError(f"{field}[{position}] is a nested list; flatten the value to a list of scalars.")
            if element is None:
                raise ValueError(f"{field}[{position}] is None. Drop it from the list or give a value.")
            texts.append(_scalar_text(element, f"{field}[{position}]"))
        return ", ".join(text for text in texts if text)
    return _scalar_text(value, field)


def _scalar_text(value: Any, field: str) -> str:
    if isinstance(value, str):
        _check_unicode(value, field)
        return value.strip()
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{field} is {number}; attribute numbers must be finite. Drop it or give a value.")
        return str(int(number)) if number.is_integer() and abs(number) < 1e16 else repr(number)
    hint = " (a set has no order: pass a sorted list)" if isinstance(value, (set, frozenset)) else ""
    raise TypeError(
        f"{field} is a {type(value).__name__}{hint}; attribute values must be str, int, float, bool or a list of "
        "those."
    )


def _check_unicode(text: str, field: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{field} holds a lone surrogate {text[error.start]!r} at position {error.start}; text must be valid "
            "Unicode. Decode the source with errors='replace' (or fix its encoding)."
        ) from None


def _item_field(kind: str, index: int | None, item: Any) -> str:
    """How errors and warnings name an item: `products[3]`, with its id when it has one."""
    if index is None:
        field = "product" if kind == "document" else "query"
    else:
        field = f"{'products' if kind == 'document' else 'queries'}[{index}]"
    if isinstance(item, Mapping) and isinstance(item.get("id"), (str, int)) and not isinstance(item["id"], bool):
        field += f" (id {item['id']!r})"
    return field


def _describe(item: Any) -> str:
    text = repr(item)
    return text if len(text) <= 80 else text[:77] + "..."


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
    """Convert any PIL mode to 8-bit RGB; transparent pixels become white, not black.

    16-bit integer images (`I;16*`, and `I`, read as 16-bit) are divided by 257 (65535 -> 255). Float images (`F`)
    in [0, 1] are multiplied by 255, those within [0, 255] kept, any other range stretched to 0..255.
    """
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    if image.mode.startswith("I;16") or image.mode == "I":
        image = image.convert("I").point(lambda value: value * (1 / 257)).convert("L")
    elif image.mode == "F":
        image = _float_to_l(image)
    return image.convert("RGB")


def _float_to_l(image: Image.Image) -> Image.Image:
    low, high = image.getextrema()
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("float image holds NaN or infinite pixels; fix the file or convert it to 8 bits first.")
    if low >= 0 and high <= 1:
        scale, offset = 255.0, 0.0
    elif low >= 0 and high <= 255:
        scale, offset = 1.0, 0.0
    else:
        scale = 255.0 / (high - low) if high > low else 0.0
        offset = -low * scale
    return image.point(lambda value: value * scale + offset).convert("L")


__all__ = ["Moon3Processor"]
