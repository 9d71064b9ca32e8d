"""How much of each product attribute can be read from the photo alone? Linear probes on the fashion photos.

    python -m benchmarks.photo_attribute_probe --out runs/probe/pixels                       # pixels + type lookup
    python -m benchmarks.photo_attribute_probe --model . --model runs/seeds-rbrf/s0/stage1 --out runs/probe/models

For the five attributes MOON3's reasoning states (gender, colour, article type, usage, season), fits one
multinomial logistic regression per attribute and feature set on the train-split photos, picks its inverse
regularisation C on the val split, and reports accuracy on the test split beside the majority-class rate (the same
rate `benchmarks.reasoning_quality` prints). Feature sets:
- `type lookup`: no photo; the train-split majority value of the product's gold article type (what a reader that
  recognised the type perfectly, and knew nothing else, would say). Article type itself is left out of this row.
- `pixels`: the photo (EXIF-oriented, transparency on white) resized to `--pixel-size` W x H RGB, standardised.
- `vector <model>`: each `--model`'s direct-mode query vector of the photo (`model.encode(kind="query")`).

It separates "the photos do not carry the attribute at this resolution" from "the model did not learn to read it":
an attribute no probe reads above the majority rate cannot be stated above it by a photo query's reasoning either
(a linear probe is a lower bound on what the pixels hold, not an upper one). Writes results.json and results.md into
--out, atomically. The data is `fashion-product-images` (products.csv with its train / val / test split column).
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fashion-product-images"
PROBED_ATTRIBUTES = ("gender", "baseColour", "articleType", "usage", "season")
SPLITS = ("train", "val", "test")
C_GRID = (0.001, 0.01, 0.1, 1.0)


# --------------------------------------------------------------------------- pure functions (tested on hand cases)


def majority_rate(values: Sequence[str]) -> tuple[str, float]:
    """(most common value, its share) of a non-empty list of labels.

    Example:
        >>> majority_rate(["Fall", "Fall", "Summer"])
        ('Fall', 0.6666666666666666)
    """
    if not values:
        raise ValueError("majority_rate needs at least one value")
    value, count = Counter(values).most_common(1)[0]
    return value, count / len(values)


def type_lookup_predictions(
    train_types: Sequence[str], train_values: Sequence[str], test_types: Sequence[str]
) -> list[str]:
    """Each test item's prediction: the most common train value among train items of its article type, or the
    overall train majority for a type the train split never shows.

    Example:
        >>> type_lookup_predictions(["Shorts", "Shorts", "Shirts"], ["Summer", "Summer", "Fall"], ["Shorts", "Caps"])
        ['Summer', 'Summer']
    """
    by_type: dict[str, Counter] = defaultdict(Counter)
    for article_type, value in zip(train_types, train_values, strict=True):
        by_type[article_type][value] += 1
    fallback = majority_rate(list(train_values))[0]
    return [by_type[t].most_common(1)[0][0] if t in by_type else fallback for t in test_types]


def fit_linear_probe(
    features: dict[str, np.ndarray], labels: dict[str, Sequence[str]], c_grid: Sequence[float] = C_GRID, seed: int = 0
) -> dict:
    """Fit a standardised multinomial logistic regression on `features["train"]`, choose C by accuracy on "val",
    and score the chosen fit on "test".

    Args:
        features: split -> float array (N_split, F).
        labels: split -> N_split labels (strings).
    Returns:
        {"c": chosen C, "val_accuracy": ..., "test_accuracy": ..., "test_predictions": [...]}
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_classes = sorted(set(labels["train"]))
    if len(train_classes) == 1:  # nothing to fit: every prediction is the one train value
        predictions = np.asarray(train_classes * len(labels["test"]))
        return {
            "c": None,
            "val_accuracy": float(np.mean(np.asarray(labels["val"]) == train_classes[0])),
            "test_accuracy": float(np.mean(predictions == np.asarray(labels["test"]))),
            "test_predictions": predictions.tolist(),
        }
    best = None
    for c in c_grid:
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=500, random_state=seed))
        with warnings.catch_warnings():
            # A fit stopped at max_iter is still a probe (a lower bound on what the features hold); say so, once.
            warnings.simplefilter("ignore", ConvergenceWarning)
            probe.fit(features["train"], list(labels["train"]))
        if probe[-1].n_iter_.max() >= 500:
            logger.info("C=%s: stopped at max_iter=500 before converging", c)
        val_accuracy = float(np.mean(probe.predict(features["val"]) == np.asarray(labels["val"])))
        if best is None or val_accuracy > best[1]:
            best = (c, val_accuracy, probe)
    c, val_accuracy, probe = best
    predictions = probe.predict(features["test"])
    return {
        "c": c,
        "val_accuracy": val_accuracy,
        "test_accuracy": float(np.mean(predictions == np.asarray(labels["test"]))),
        "test_predictions": predictions.tolist(),
    }


# --------------------------------------------------------------------------- data and features


def read_products(data: Path) -> dict[str, list[dict]]:
    """split -> product rows of products.csv that have a photo on disk and all probed attributes."""
    csv_path = data / "products.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"--data {data}: no products.csv (expected the fashion-product-images folder)")
    products: dict[str, list[dict]] = {split: [] for split in SPLITS}
    skipped = Counter()
    with csv_path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row.get("split") not in products:
                skipped["split"] += 1
            elif not (data / row["image"]).is_file():
                skipped["photo missing"] += 1
            elif not all(row.get(name) for name in PROBED_ATTRIBUTES):
                skipped["attribute missing"] += 1
            else:
                products[row["split"]].append(row)
    if skipped:
        logger.info("products left out: %s", dict(skipped))
    return products


def pixel_features(paths: Sequence[Path], size: tuple[int, int], progress: bool) -> np.ndarray:
    """(N, W*H*3) float32 in [0, 1]: each photo resized to `size` (W, H) with bicubic resampling."""
    from PIL import Image
    from tqdm.auto import tqdm

    from .encoders import load_plain_image

    rows = []
    for path in tqdm(paths, desc="Reading photos", disable=not progress):
        image = load_plain_image(path).resize(size, Image.Resampling.BICUBIC)
        rows.append(np.asarray(image, dtype=np.float32).reshape(-1) / 255.0)
    return np.stack(rows)


def vector_features(model_id: str, paths: Sequence[Path], batch_size: int, progress: bool) -> np.ndarray:
    """(N, E) direct-mode query vectors of the photos from a MOON3 checkpoint (its own code)."""
    import torch

    from .reasoning_quality import load_moon3

    model, processor = load_moon3(model_id, "cpu")
    with torch.inference_mode():
        vectors = model.encode(
            [str(path) for path in paths], processor, kind="query", batch_size=batch_size, show_progress_bar=progress
        )
    return vectors.float().numpy()


# --------------------------------------------------------------------------- run


def probe_rows(products: dict[str, list[dict]], feature_sets: dict[str, dict[str, np.ndarray]], seed: int) -> dict:
    """feature-set name -> attribute -> probe result (test accuracy, chosen C, ...), plus the type-lookup row."""
    labels = {name: {s: [p[name] for p in products[s]] for s in SPLITS} for name in PROBED_ATTRIBUTES}
    rows = {"type lookup": {}}
    for name in PROBED_ATTRIBUTES:
        if name == "articleType":
            continue
        predictions = type_lookup_predictions(
            labels["articleType"]["train"], labels[name]["train"], labels["articleType"]["test"]
        )
        accuracy = float(np.mean(np.asarray(predictions) == np.asarray(labels[name]["test"])))
        rows["type lookup"][name] = {"test_accuracy": accuracy}
    for set_name, features in feature_sets.items():
        rows[set_name] = {}
        for name in PROBED_ATTRIBUTES:
            started = time.perf_counter()
            result = fit_linear_probe(features, labels[name], seed=seed)
            result.pop("test_predictions")
            result["seconds"] = round(time.perf_counter() - started, 1)
            rows[set_name][name] = result
            logger.info("%s / %s: test %.3f (C=%s)", set_name, name, result["test_accuracy"], result["c"])
    return rows


def markdown(results: dict) -> str:
    """The probe table: one row per feature set, test accuracy per attribute, `*` at or below the majority rate."""
    majority = results["majority"]
    header = "| features | " + " | ".join(f"{a} (majority {majority[a]['rate']:.3f})" for a in PROBED_ATTRIBUTES)
    lines = [header + " |", "|---|" + "---:|" * len(PROBED_ATTRIBUTES)]
    for set_name, row in results["probes"].items():
        cells = []
        for name in PROBED_ATTRIBUTES:
            if name not in row:
                cells.append("n/a")
                continue
            accuracy = row[name]["test_accuracy"]
            cells.append(f"{accuracy:.3f}" + ("*" if accuracy <= majority[name]["rate"] else ""))
        lines.append(f"| {set_name} | " + " | ".join(cells) + " |")
    counts = results["counts"]
    lines.append("")
    lines.append(
        f"Test split, {counts['test']} photos (probes fit on {counts['train']} train photos, C chosen on "
        f"{counts['val']} val photos); `*` = at or below the majority rate."
    )
    return "\n".join(lines) + "\n"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="fashion-product-images folder")
    parser.add_argument("--out", required=True, type=Path, help="output folder (results.json, results.md)")
    parser.add_argument(
        "--model", action="append", default=[], help="a MOON3 checkpoint whose photo vectors to probe (repeatable)"
    )
    parser.add_argument(
        "--pixel-size", type=int, nargs=2, default=(16, 16), metavar=("W", "H"), help="photo size for `pixels`"
    )
    parser.add_argument("--no-pixels", action="store_true", help="skip the `pixels` probe")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N products of each split (0 = all)")
    parser.add_argument("--batch-size", type=int, default=64, help="photos per forward pass for --model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the logistic regressions")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .io_utils import atomic_write_json, atomic_write_text
    from .run import library_versions

    if args.limit < 0 or args.batch_size <= 0 or min(args.pixel_size) <= 0:
        raise SystemExit("--limit must be >= 0, --batch-size and --pixel-size positive")
    started = time.perf_counter()
    products = read_products(args.data)
    if args.limit:
        products = {split: rows[: args.limit] for split, rows in products.items()}
    for split, rows in products.items():
        if not rows:
            raise SystemExit(f"--data {args.data}: no usable {split}-split products")
    paths = {split: [args.data / row["image"] for row in rows] for split, rows in products.items()}
    progress = not args.no_progress
    feature_sets = {}
    if not args.no_pixels:
        size = tuple(args.pixel_size)
        feature_sets[f"pixels {size[0]}x{size[1]}"] = {s: pixel_features(paths[s], size, progress) for s in SPLITS}
    for model_id in args.model:
        feature_sets[f"vector {model_id}"] = {
            s: vector_features(model_id, paths[s], args.batch_size, progress) for s in SPLITS
        }
    results = {
        "majority": {
            name: dict(zip(("value", "rate"), majority_rate([p[name] for p in products["test"]])))
            for name in PROBED_ATTRIBUTES
        },
        "counts": {split: len(rows) for split, rows in products.items()},
        "probes": probe_rows(products, feature_sets, args.seed),
        "data": str(args.data),
        "models": args.model,
        "pixel_size": list(args.pixel_size),
        "versions": library_versions(),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    table = markdown(results)
    atomic_write_json(args.out / "results.json", results)
    atomic_write_text(args.out / "results.md", table)
    print(table)
    return results


if __name__ == "__main__":
    main()
