"""Every zero-shot prompt of the benchmark suite, in one place (like open_clip's zero_shot_metadata.py).

A class's score is the mean cosine between the input and the class's prompts, each prompt embedded as a query.
Templates are keyed by label-set name; `DEFAULT_TEMPLATES` covers any other label set.

Example:
    >>> class_prompts("baseColour", "Navy Blue")[0]
    'a photo of a navy blue product'
"""

from __future__ import annotations

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of {label}", "{label}")

TEMPLATES: dict[str, tuple[str, ...]] = {
    "masterCategory": ("a photo of {label}", "{label}", "a product from the {label} category"),
    "subCategory": ("a photo of {label}", "{label}", "a product from the {label} category"),
    "articleType": ("a photo of {label}", "{label}", "a product of type {label}"),
    "baseColour": ("a photo of a {label} product", "{label}", "a {label} coloured item"),
    "gender": ("a product for {label}", "{label}", "fashion for {label}"),
    "usage": ("a photo of {label} wear", "{label}", "a product for {label} use"),
    "season": ("clothing for {label}", "{label}", "a product for the {label} season"),
}


def class_prompts(label_set: str, label: str, templates: dict[str, tuple[str, ...]] | None = None) -> list[str]:
    """The prompts of one class: each template of `label_set` filled with the lower-cased label."""
    table = TEMPLATES if templates is None else templates
    return [t.format(label=label.lower()) for t in table.get(label_set, DEFAULT_TEMPLATES)]
