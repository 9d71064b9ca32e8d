"""The zero-shot prompt templates of the benchmark suite and where a label set gets its own.

A class's score is the mean cosine between the input and the class's prompts, each prompt embedded as a query. A
label set's templates come, in this order, from its `templates` list in the data folder's manifest.json, from the
built-in table of the data folder it was written for (`BUILTIN_TEMPLATES`, keyed by the manifest's `name`: the
fashion catalogue of benchmarks.convert_fashion), else `DEFAULT_TEMPLATES`. So a label set named "gender" in some
other data folder gets the neutral defaults (or its own templates), never the fashion ones.

Example:
    >>> templates, source = label_set_templates("fashion", "baseColour")
    >>> class_prompts(templates, "Navy Blue")[0], source
    ('a photo of a navy blue product', 'built-in templates of data folder fashion')
    >>> label_set_templates("shop-photos", "gender")[1]
    'default templates'
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of {label}", "{label}")

# The label sets of the fashion catalogue's data folder (manifest name "fashion"), which predate per-set templates in
# the manifest; kept here so that folder's data hash (and the README's figures) stay as they are.
BUILTIN_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "fashion": {
        "masterCategory": ("a photo of {label}", "{label}", "a product from the {label} category"),
        "subCategory": ("a photo of {label}", "{label}", "a product from the {label} category"),
        "articleType": ("a photo of {label}", "{label}", "a product of type {label}"),
        "baseColour": ("a photo of a {label} product", "{label}", "a {label} coloured item"),
        "gender": ("a product for {label}", "{label}", "fashion for {label}"),
        "usage": ("a photo of {label} wear", "{label}", "a product for {label} use"),
        "season": ("clothing for {label}", "{label}", "a product for the {label} season"),
    }
}


def label_set_templates(
    data_name: str, label_set: str, own: Sequence[str] | None = None
) -> tuple[tuple[str, ...], str]:
    """(templates, where they came from) of one label set: its own, its data folder's built-in ones, or defaults."""
    if own:
        return tuple(own), "manifest.json"
    builtin = BUILTIN_TEMPLATES.get(data_name, {})
    if label_set in builtin:
        return builtin[label_set], f"built-in templates of data folder {data_name}"
    return DEFAULT_TEMPLATES, "default templates"


def class_prompts(templates: Sequence[str], label: str) -> list[str]:
    """The prompts of one class: each template filled with the lower-cased label."""
    return [t.format(label=label.lower()) for t in templates]
