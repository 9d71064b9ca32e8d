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


# The layouts of a stage-1 reasoning target (`python -m train.data build-fashion --reasoning-layout`):
# - "scored": the five attributes `benchmarks.reasoning_quality` scores, in one fixed order for every query kind
#   (an attribute query states the ones it names, in that order), so the next field never depends on the query kind;
# - "full": "scored" with the two category columns in front of the article type (audience; category;
#   sub-category; type; colour; usage; season), one fixed order too; the zero-shot classification tasks ask for
#   those categories, and "scored" never names them;
# - "base-rate-first": the five "scored" fields ordered by their majority rate, highest first (usage 0.78, season
#   0.64, audience 0.62, colour 0.22, type 0.17 on the train split of products.csv). Greedy decoding states each field
#   after the values the model already wrote; with "scored", usage came after a photo's article type, which is wrong
#   70 % of the time and fixes the usage in training (Sports Shoes -> Sports, Kurtas -> Ethnic), so a wrong type
#   dragged the photo usage below the always-Casual rate. Stated first, usage and season are read from the input alone;
# - "usage-first": "scored" with the usage moved to the front; the season stays last, after the type and colour it
#   can be told from (stated second, in "base-rate-first", a photo's season became a constant `Fall`);
# - "catalogue": every column in catalogue order for title and image queries, the query's own order for attribute
#   queries; the layout the shipped moon3-mini before the reasoning work was trained on (two orders for one slot).
REASONING_LAYOUTS = {
    "scored": ("gender", "articleType", "baseColour", "usage", "season"),
    "base-rate-first": ("usage", "season", "gender", "baseColour", "articleType"),
    "usage-first": ("usage", "gender", "articleType", "baseColour", "season"),
    "full": ("gender", "masterCategory", "subCategory", "articleType", "baseColour", "usage", "season"),
    "catalogue": None,
}


def fashion_reasoning_target(attributes: Mapping[str, Any], layout: str = "scored") -> str:
    """The reasoning target of `attributes` in a layout of `REASONING_LAYOUTS`.

    >>> fashion_reasoning_target({"baseColour": "Navy Blue", "masterCategory": "Apparel", "gender": "Men"})
    'audience: Men; colour: Navy Blue.'
    """
    if layout not in REASONING_LAYOUTS:
        raise ValueError(f"reasoning layout must be one of {sorted(REASONING_LAYOUTS)}, got {layout!r}.")
    order = REASONING_LAYOUTS[layout]
    if order is not None:
        attributes = {key: attributes[key] for key in order if attributes.get(key)}
    return fashion_reasoning(attributes)
