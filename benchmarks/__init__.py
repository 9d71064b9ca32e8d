"""MOON3 benchmark suite: MBE-style zero-shot evaluation on data in the documented folder format.

Task families are listed here explicitly (no self-filling registry). Each maps to a function that builds the
family's tasks from a loaded data folder: one retrieval task per query set, one zero-shot task per
(label set, view) of the matching kind.

Example:
    >>> sorted(TASK_FAMILIES)
    ['attributes', 'classification', 'retrieval']
"""

from __future__ import annotations


def _retrieval(data, **kwargs):
    from .tasks.retrieval import RetrievalTask

    return RetrievalTask.from_data(data, **kwargs)


def _classification(data, **kwargs):
    from .tasks.zero_shot import ZeroShotTask

    return ZeroShotTask.from_data(data, kind="category", **kwargs)


def _attributes(data, **kwargs):
    from .tasks.zero_shot import ZeroShotTask

    return ZeroShotTask.from_data(data, kind="attribute", **kwargs)


TASK_FAMILIES = {
    "retrieval": _retrieval,  # text→image, image→text, text→product, image→product, attribute queries, matching
    "classification": _classification,  # zero-shot category at each level (masterCategory, subCategory, ...)
    "attributes": _attributes,  # zero-shot attribute prediction (baseColour, gender, usage, season)
}


def build_tasks(data, selection: list[str] | None = None, **kwargs) -> list:
    """All tasks of `data` whose family, short name (e.g. `text2image`, `baseColour/image`) or full name is in
    `selection` (None or empty = all)."""
    tasks = [task for family in TASK_FAMILIES.values() for task in family(data, **kwargs)]
    if not selection:
        return tasks
    chosen = [t for t in tasks if {t.family, t.short_name, t.short_name.split("/")[0], t.name} & set(selection)]
    return chosen
