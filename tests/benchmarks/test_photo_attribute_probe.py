"""benchmarks.photo_attribute_probe on hand-built cases with known answers, and end to end on a tiny folder."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests.benchmarks.conftest import COLOURS


def test_majority_rate_and_empty_input():
    from benchmarks.photo_attribute_probe import majority_rate

    assert majority_rate(["Casual", "Sports", "Casual", "Casual"]) == ("Casual", 0.75)
    with pytest.raises(ValueError, match="at least one"):
        majority_rate([])


def test_type_lookup_uses_the_types_majority_and_falls_back_to_the_overall_one():
    from benchmarks.photo_attribute_probe import type_lookup_predictions

    train_types = ["Shorts", "Shorts", "Shorts", "Jackets", "Shirts", "Shirts", "Shirts"]
    train_seasons = ["Summer", "Summer", "Fall", "Winter", "Fall", "Fall", "Fall"]
    predictions = type_lookup_predictions(train_types, train_seasons, ["Jackets", "Shorts", "Caps"])
    assert predictions == ["Winter", "Summer", "Fall"]  # Caps is never seen: the overall majority, Fall


def test_probe_on_features_that_encode_the_label_is_exact():
    from benchmarks.photo_attribute_probe import fit_linear_probe

    rng = np.random.default_rng(0)
    classes = ["Men", "Women", "Unisex"]

    def split(n):
        labels = [classes[i % 3] for i in range(n)]
        one_hot = np.eye(3)[[classes.index(label) for label in labels]]
        return np.hstack([one_hot * 5.0, rng.normal(size=(n, 4))]), labels

    data = {name: split(n) for name, n in (("train", 60), ("val", 30), ("test", 30))}
    result = fit_linear_probe({k: v[0] for k, v in data.items()}, {k: v[1] for k, v in data.items()})
    assert result["test_accuracy"] == 1.0 and result["val_accuracy"] == 1.0
    assert result["test_predictions"] == data["test"][1]


def test_probe_on_features_that_carry_nothing_says_the_majority_value():
    from benchmarks.photo_attribute_probe import fit_linear_probe

    labels = {
        "train": ["Fall"] * 14 + ["Summer"] * 6,
        "val": ["Fall"] * 7 + ["Summer"] * 3,
        "test": ["Fall"] * 6 + ["Summer"] * 4,
    }
    features = {split: np.zeros((len(values), 5)) for split, values in labels.items()}
    result = fit_linear_probe(features, labels)
    assert result["test_predictions"] == ["Fall"] * 10
    assert result["test_accuracy"] == pytest.approx(0.6)


def _probe_folder(root, per_split: int = 18):
    """products.csv with train/val/test rows whose photo colour is the base colour; type decides the season."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    types = [("Shorts", "Summer"), ("Jackets", "Winter"), ("Shirts", "Fall")]
    rows = []
    for split in ("train", "val", "test"):
        for index in range(per_split):
            product_id = len(rows) + 1
            colour = list(COLOURS)[index % 3]
            article, season = types[(index // 3) % 3]
            Image.new("RGB", (12, 16), COLOURS[colour]).save(root / "images" / f"{product_id}.jpg")
            rows.append(
                {"id": product_id, "split": split, "productDisplayName": f"{colour} {article}",
                 "gender": ["Men", "Women"][index % 2], "masterCategory": "Apparel", "subCategory": "Topwear",
                 "articleType": article, "baseColour": colour, "season": season, "year": "2012",
                 "usage": "Casual", "image": f"images/{product_id}.jpg"}
            )  # fmt: skip
    rows.append(dict(rows[0], id=999, image="images/missing.jpg"))  # no photo on disk: left out, not a crash
    with (root / "products.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_command_on_a_tiny_folder_reads_colour_from_pixels_and_season_from_the_type(tmp_path, tiny_checkpoint):
    from benchmarks.photo_attribute_probe import main

    data = _probe_folder(tmp_path / "fashion")
    out = tmp_path / "out"
    results = main(
        ["--data", str(data), "--out", str(out), "--pixel-size", "6", "8", "--model", str(tiny_checkpoint),
         "--batch-size", "8", "--no-progress"]
    )  # fmt: skip
    saved = json.loads((out / "results.json").read_text())
    assert saved["counts"] == {"train": 18, "val": 18, "test": 18}
    assert saved["probes"]["pixels 6x8"]["baseColour"]["test_accuracy"] == 1.0
    assert saved["probes"]["type lookup"]["season"]["test_accuracy"] == 1.0
    assert "articleType" not in saved["probes"]["type lookup"]
    assert saved["majority"]["usage"] == {"value": "Casual", "rate": 1.0}
    vector_row = saved["probes"][f"vector {tiny_checkpoint}"]
    assert set(vector_row) == {"gender", "baseColour", "articleType", "usage", "season"}
    table = (out / "results.md").read_text()
    assert "| type lookup |" in table and "n/a" in table and "usage (majority 1.000)" in table
    assert results["probes"] == saved["probes"]


def test_missing_folder_and_bad_arguments_are_refused(tmp_path):
    from benchmarks.photo_attribute_probe import main

    with pytest.raises(FileNotFoundError, match="products.csv"):
        main(["--data", str(tmp_path), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="--batch-size"):
        main(["--data", str(tmp_path), "--out", str(tmp_path / "out"), "--batch-size", "0"])
