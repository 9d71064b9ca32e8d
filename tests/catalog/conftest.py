"""Fixtures for the catalogue tests (the data helpers live in catalog_data.py)."""

from __future__ import annotations

import pytest
from catalog_data import BAD_ROWS, good_products, write_jsonl


@pytest.fixture
def catalogue(tmp_path):
    """products.jsonl with 8 good rows and 5 bad ones (missing image, unknown field, wrong type, duplicate id,
    broken JSON) interleaved; returns the file path."""
    good = good_products(tmp_path / "images")
    bad = [r for r, _ in BAD_ROWS]
    rows = good[:3] + [bad[0]] + good[3:5] + [bad[1], "{not json"] + good[5:] + bad[2:]
    return write_jsonl(tmp_path / "products.jsonl", rows)
