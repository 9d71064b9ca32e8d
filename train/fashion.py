"""Names that belong to the fashion catalogue (`../shared/data/fashion-product-images`), not to the model.

The stage-1 reasoning targets phrase the catalogue's attribute columns in plain words ("audience: Men" for the
`gender` column); the processor writes whatever names it is given (`Moon3Processor.format_reasoning`).

    >>> fashion_reasoning({"articleType": "Shirts", "baseColour": "Navy Blue"})
    'type: Shirts; colour: Navy Blue.'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# catalogue column -> the word the reasoning target uses for it (also the columns the tokenizer's texts read)
FASHION_REASONING_FIELD_NAMES = {
    "gender": "audience",
    "masterCategory": "category",
    "subCategory": "sub-category",
    "articleType": "type",
    "baseColour": "colour",
    "season": "season",
    "usage": "usage",
}


def fashion_reasoning(attributes: Mapping[str, Any]) -> str:
    """The stage-1 reasoning target of a fashion product's attributes."""
    from moon3.processing_moon3 import Moon3Processor

    return Moon3Processor.format_reasoning(attributes, FASHION_REASONING_FIELD_NAMES)
