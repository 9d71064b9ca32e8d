"""The MOON3 benchmark data folder: load it, validate it, hash it, and turn its products into encoder inputs.

Layout (format version 1; benchmarks/README.md is the reference)::

    <dir>/manifest.json            {"format": "moon3-bench", "version": 1, "name": ..., "products": "products.jsonl",
                                    "query_sets": {name: {...}}, "label_sets": {name: {...}}}
    <dir>/products.jsonl           {"id", "title", "attributes": {k: v}, "images": [path], "category": [level, ...],
                                    "description"?, "group"?}
    <dir>/queries/<name>.jsonl     {"id", "text"?, "image"?, "product_id"?, "positives": [product id, ...]}
    <dir>/labels/<name>.jsonl      {"product_id", "label"}, or a query item {"id", "text"?, "image"?, "label"}

Image paths are relative to the folder and must stay inside it (absolute paths and `..` that leave the folder are
refused; a symlink placed in the folder is the folder owner's choice and is followed). Every error names the file,
the row (1-based line number) and the field, and says how to fix it. Empty query and label files, and image views of products without images are refused at load, before any model runs.

Example:
    >>> from benchmarks.data_format import load_bench_data
    >>> data = load_bench_data("runs/data/fashion")  # doctest: +SKIP
    >>> data.name, len(data.products), sorted(data.query_sets)  # doctest: +SKIP
    ('fashion', 993, ['attribute_queries', 'image2product', 'image2text', 'text2image', 'text2product'])
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

FORMAT_NAME = "moon3-bench"
FORMAT_VERSION = 1

# How a product is shown to the model. `product` = the full record; `product_text` = title + attributes, no image
# (used when the query is the product's own photo); `title_image` = title + photos, no attributes (used when the
# query is derived from the attributes); `title` = the title as plain text; `image` = the first photo.
VIEWS = ("product", "product_text", "title_image", "title", "image")
# Modalities an encoder must support to encode a view. Products degrade to text for text-only models.
VIEW_MODALITIES = {
    "product": {"text"},
    "product_text": {"text"},
    "title_image": {"text"},
    "title": {"text"},
    "image": {"image"},
}
LABEL_KINDS = ("category", "attribute")
# The view of a label set whose rows are query items (text, image or both, with an id) rather than products.
LABEL_ITEM_VIEW = "query"


class DataFormatError(ValueError):
    """A benchmark data folder that does not follow the documented format."""


def _fail(file: Path | str, row: int | None, field_name: str, problem: str, fix: str):
    where = f"{file}" if row is None else f"{file}, row {row}"
    raise DataFormatError(f"{where}, field '{field_name}': {problem}. Fix: {fix}")


@dataclass
class QuerySet:
    """Queries with their positives. `query_view` is set when queries are products (`product_id`)."""

    name: str
    queries: list[dict]
    gallery_view: str
    query_view: str | None = None
    gallery_group: str | None = None
    description: str = ""


@dataclass
class LabelSet:
    """Gold labels of one field (a category level or an attribute) for zero-shot prediction."""

    name: str
    kind: str
    views: list[str]
    rows: list[dict]
    classes: list[str]
    description: str = ""
    templates: list[str] | None = None  # the manifest's prompt templates ("{label}" placeholder), else built-in


@dataclass
class BenchData:
    """A loaded and validated data folder."""

    root: Path
    name: str
    manifest: dict
    products: list[dict]
    query_sets: dict[str, QuerySet] = field(default_factory=dict)
    label_sets: dict[str, LabelSet] = field(default_factory=dict)
    hash: str = ""
    images_hash: str = ""

    def __post_init__(self):
        self.index = {p["id"]: i for i, p in enumerate(self.products)}

    @property
    def cache_hash(self) -> str:
        """What the embedding cache keys on: the data hash and the sha256 of every image's bytes."""
        return f"{self.hash}:{self.images_hash}"

    def gallery(self, group: str | None) -> list[dict]:
        """Products of one group (all products when `group` is None), in file order."""
        return [p for p in self.products if group is None or p.get("group") == group]

    def resolve(self, path: str) -> str:
        """Absolute path of an image named in the folder."""
        return str((self.root / path).resolve())


def product_view(product: dict, view: str, root: Path) -> dict:
    """Turn a product record into an encoder input for `view` (see VIEWS); image paths become absolute.

    Example:
        >>> product_view({"id": "1", "title": "Red Shirt", "attributes": {}, "images": ["a.jpg"]}, "title", Path("/d"))
        {'id': '1', 'text': 'Red Shirt', 'image': None}
    """
    images = [str((root / p).resolve()) for p in product.get("images", [])]
    if view == "title":
        return {"id": product["id"], "text": product["title"], "image": None}
    if view == "image":
        if not images:
            raise DataFormatError(f"product {product['id']!r} has no image, so it has no 'image' view")
        return {"id": product["id"], "text": None, "image": images[0]}
    attributes = {} if view == "title_image" else dict(product.get("attributes", {}))
    record = {"id": product["id"], "title": product["title"], "attributes": attributes}
    if product.get("description"):
        record["description"] = product["description"]
    record["images"] = [] if view == "product_text" else images
    return record


def _read_jsonl(root: Path, rel: str) -> list[tuple[int, dict]]:
    path = root / rel
    if not path.is_file():
        _fail(rel, None, "file", "the file does not exist", "run the converter again or fix the manifest entry")
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            _fail(rel, line_no, "<json>", f"invalid JSON ({e.msg})", "write one JSON object per line")
        if not isinstance(row, dict):
            _fail(rel, line_no, "<json>", f"expected an object, got {type(row).__name__}", "one object a line")
        rows.append((line_no, row))
    return rows


def _need_str(file, row, obj, key, optional=False):
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        _fail(file, row, key, f"expected a non-empty string, got {value!r}", f"give every row a string '{key}'")
    return value


def _validate_product(file, row, p, root: Path, check_images: bool) -> dict:
    _need_str(file, row, p, "id")
    _need_str(file, row, p, "title")
    attrs = p.setdefault("attributes", {})
    if not isinstance(attrs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in attrs.items()):
        _fail(file, row, "attributes", f"expected an object of strings, got {attrs!r}", 'use {"colour": "Navy Blue"}')
    images = p.setdefault("images", [])
    if not isinstance(images, list) or not all(isinstance(x, str) for x in images):
        _fail(file, row, "images", f"expected a list of paths, got {images!r}", "list paths relative to the folder")
    for image in images:
        _check_image_path(file, row, "images", image, root, check_images)
    category = p.setdefault("category", [])
    if not isinstance(category, list) or not all(isinstance(x, str) for x in category):
        _fail(file, row, "category", f"expected a list of strings, got {category!r}", 'use ["Apparel", "Topwear"]')
    _need_str(file, row, p, "description", optional=True)
    _need_str(file, row, p, "group", optional=True)
    return p


def _check_image_path(file, row, field_name: str, image: str, root: Path, check_files: bool) -> None:
    """Refuse a path that leaves the data folder; with `check_files`, also a missing or unreadable image."""
    normal = os.path.normpath(image)
    if os.path.isabs(image) or normal == ".." or normal.startswith(".." + os.sep):
        _fail(file, row, field_name, f"image path {image!r} leaves the data folder", "copy the image into the folder")
    if not check_files:
        return
    path = root / normal
    if not path.is_file():
        _fail(file, row, field_name, f"image {image!r} not found under {root}", "copy the image or fix the path")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):  # parses the header only; a bad body still fails, naming the item, at encode time
            pass
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        _fail(
            file, row, field_name, f"image {image!r} cannot be read ({error})", "replace the file with a valid image"
        )


def _need_image(file, row, product: dict, field_name: str, view: str) -> None:
    if not product.get("images"):
        _fail(
            file,
            row,
            field_name,
            f"product {product['id']!r} has no image, but the {view!r} view shows its photo",
            "give the product an image, or drop it from this set",
        )


def _validate_query(file, row, q, data: BenchData, spec: QuerySet, gallery_ids: set[str]) -> dict:
    _need_str(file, row, q, "id")
    has_product = q.get("product_id") is not None
    if has_product:
        if q["product_id"] not in data.index:
            _fail(file, row, "product_id", f"unknown product {q['product_id']!r}", "use an id from products.jsonl")
        if spec.query_view is None:
            _fail(file, row, "product_id", "the query set has no 'query_view'", "set query_view in manifest.json")
        if spec.query_view == "image":
            _need_image(file, row, data.products[data.index[q["product_id"]]], "product_id", "image")
    else:
        text = _need_str(file, row, q, "text", optional=True)
        image = _need_str(file, row, q, "image", optional=True)
        if text is None and image is None:
            _fail(file, row, "text", "the query has no text, image or product_id", "give at least one of them")
        if image is not None:
            _check_image_path(file, row, "image", image, data.root, check_files=True)
    positives = q.get("positives")
    if not isinstance(positives, list) or not positives or not all(isinstance(x, str) for x in positives):
        _fail(file, row, "positives", f"expected a non-empty list of product ids, got {positives!r}", "list ids")
    for pid in positives:
        if pid not in gallery_ids:
            _fail(
                file,
                row,
                "positives",
                f"{pid!r} is not in the gallery (group {spec.gallery_group!r})",
                "list only ids of products in the query set's gallery group",
            )
    return q


def _load_query_set(data: BenchData, name: str, spec: dict) -> QuerySet:
    where = f"manifest.json query_sets.{name}"
    for key in ("file", "gallery_view"):
        if not isinstance(spec.get(key), str):
            _fail(where, None, key, f"missing or not a string: {spec.get(key)!r}", f"set '{key}'")
    for key in ("gallery_view", "query_view"):
        if spec.get(key) is not None and spec[key] not in VIEWS:
            _fail(where, None, key, f"unknown view {spec[key]!r}", f"use one of {list(VIEWS)}")
    qs = QuerySet(
        name=name,
        queries=[],
        gallery_view=spec["gallery_view"],
        query_view=spec.get("query_view"),
        gallery_group=spec.get("gallery_group"),
        description=spec.get("description", ""),
    )
    gallery_ids = {p["id"] for p in data.gallery(qs.gallery_group)}
    if not gallery_ids:
        _fail(where, None, "gallery_group", f"no product has group {qs.gallery_group!r}", "fix the group name")
    if qs.gallery_view == "image":
        for product in data.gallery(qs.gallery_group):
            _need_image(data.manifest["products"], None, product, "images", "image")
    seen = set()
    for row, q in _read_jsonl(data.root, spec["file"]):
        _validate_query(spec["file"], row, q, data, qs, gallery_ids)
        if q["id"] in seen:
            _fail(spec["file"], row, "id", f"duplicate query id {q['id']!r}", "make query ids unique")
        seen.add(q["id"])
        qs.queries.append(q)
    if not qs.queries:
        _fail(spec["file"], None, "file", "the query file holds no query", "write queries into it or drop the set")
    return qs


def _load_label_set(data: BenchData, name: str, spec: dict) -> LabelSet:
    where = f"manifest.json label_sets.{name}"
    if spec.get("kind") not in LABEL_KINDS:
        _fail(where, None, "kind", f"got {spec.get('kind')!r}", f"use one of {list(LABEL_KINDS)}")
    rows, line_numbers = [], []
    for row, r in _read_jsonl(data.root, spec["file"]):
        _need_str(spec["file"], row, r, "label")
        if r.get("product_id") is not None or not ("text" in r or "image" in r):
            pid = _need_str(spec["file"], row, r, "product_id")
            if pid not in data.index:
                _fail(spec["file"], row, "product_id", f"unknown product {pid!r}", "use an id from products.jsonl")
        else:
            _validate_label_item(spec["file"], row, r, data.root)
        rows.append(r)
        line_numbers.append(row)
    if not rows:
        _fail(spec["file"], None, "file", "the label file holds no row", "write labels into it or drop the set")
    item_rows = sum(r.get("product_id") is None for r in rows)
    if 0 < item_rows < len(rows):
        _fail(where, None, "file", "rows mix products and query items", "put query items in a label set of their own")
    views = spec.get("views", [LABEL_ITEM_VIEW] if rows and item_rows == len(rows) else ["image"])
    allowed = [LABEL_ITEM_VIEW] if rows and item_rows == len(rows) else list(VIEWS)
    if not isinstance(views, list) or not views or any(v not in allowed for v in views):
        _fail(where, None, "views", f"got {views!r}", f"use a non-empty list drawn from {allowed} for these rows")
    if "image" in views and not item_rows:
        for row, r in zip(line_numbers, rows):
            _need_image(spec["file"], row, data.products[data.index[r["product_id"]]], "product_id", "image")
    templates = spec.get("templates")
    if templates is not None and (
        not isinstance(templates, list)
        or not templates
        or not all(isinstance(t, str) and "{label}" in t for t in templates)
    ):
        _fail(where, None, "templates", f"got {templates!r}", 'give a list of strings with "{label}", or leave it out')
    classes = spec.get("classes") or sorted({r["label"] for r in rows})
    unknown = {r["label"] for r in rows} - set(classes)
    if unknown:
        _fail(where, None, "classes", f"labels {sorted(unknown)} are not listed", "add them to 'classes'")
    return LabelSet(
        name=name,
        kind=spec["kind"],
        views=views,
        rows=rows,
        classes=list(classes),
        description=spec.get("description", ""),
        templates=templates,
    )


def _validate_label_item(file, row, r, root: Path) -> None:
    """A label row that is a query item: an id and a text, an image or both."""
    _need_str(file, row, r, "id")
    text = _need_str(file, row, r, "text", optional=True)
    image = _need_str(file, row, r, "image", optional=True)
    if text is None and image is None:
        _fail(file, row, "text", "the row has no text, image or product_id", "give at least one of them")
    if image is not None:
        _check_image_path(file, row, "image", image, root, check_files=True)


def data_hash(root: Path, manifest: dict, products: list[dict]) -> str:
    """sha256 over manifest.json, every referenced .jsonl file and each image's path and size (not its bytes)."""
    digest = hashlib.sha256((root / "manifest.json").read_bytes())
    files = [manifest["products"]] + [s["file"] for s in manifest.get("query_sets", {}).values()]
    files += [s["file"] for s in manifest.get("label_sets", {}).values()]
    for rel in files:
        digest.update(rel.encode() + b"\0" + (root / rel).read_bytes())
    for p in products:
        for image in p["images"]:
            size = (root / image).stat().st_size if (root / image).exists() else -1
            digest.update(f"{image}\0{size}\0".encode())
    return digest.hexdigest()


def images_digest(root: Path, products: list[dict], query_sets: dict[str, QuerySet]) -> str:
    """sha256 over the path and the sha256 of the bytes of every image the folder references (products, queries)."""
    from .io_utils import sha256_file

    paths = sorted({image for p in products for image in p["images"]})
    paths += sorted({q["image"] for qs in query_sets.values() for q in qs.queries if q.get("image")} - set(paths))
    digest = hashlib.sha256()
    for image in paths:
        path = root / os.path.normpath(image)
        digest.update(f"{image}\0{sha256_file(path) if path.is_file() else 'missing'}\0".encode())
    return digest.hexdigest()


def load_bench_data(root: str | Path, check_images: bool = True) -> BenchData:
    """Load and validate a data folder; raise DataFormatError naming file, row and field on the first problem."""
    root = Path(root)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        _fail(manifest_path, None, "file", "not found", "point --data at a folder written by a benchmarks converter")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        _fail("manifest.json", e.lineno, "<json>", f"invalid JSON ({e.msg})", "fix the JSON syntax")
    if manifest.get("format") != FORMAT_NAME:
        _fail(
            "manifest.json",
            None,
            "format",
            f"expected {FORMAT_NAME!r}, got {manifest.get('format')!r}",
            "write manifests with a benchmarks converter",
        )
    if manifest.get("version") != FORMAT_VERSION:
        _fail(
            "manifest.json",
            None,
            "version",
            f"expected {FORMAT_VERSION}, got {manifest.get('version')!r}",
            "convert the data again with this version of benchmarks/",
        )
    manifest.setdefault("products", "products.jsonl")
    products, seen = [], set()
    for row, p in _read_jsonl(root, manifest["products"]):
        _validate_product(manifest["products"], row, p, root, check_images)
        if p["id"] in seen:
            _fail(manifest["products"], row, "id", f"duplicate product id {p['id']!r}", "make product ids unique")
        seen.add(p["id"])
        products.append(p)
    data = BenchData(root=root, name=manifest.get("name", root.name), manifest=manifest, products=products)
    for name, spec in manifest.get("query_sets", {}).items():
        data.query_sets[name] = _load_query_set(data, name, spec)
    for name, spec in manifest.get("label_sets", {}).items():
        spec.setdefault("file", f"labels/{name}.jsonl")
        data.label_sets[name] = _load_label_set(data, name, spec)
    data.hash = data_hash(root, manifest, products)
    data.images_hash = images_digest(root, products, data.query_sets)
    return data


def write_bench_data(
    root: str | Path,
    name: str,
    products: list[dict],
    query_sets: dict[str, tuple[dict, list]],
    label_sets: dict[str, tuple[dict, list]],
    extra: dict | None = None,
) -> Path:
    """Write a data folder atomically file by file; manifest.json goes last, so a crash leaves no valid folder.

    `query_sets` / `label_sets` map a name to (manifest spec without 'file', rows); a set without rows is left out
    with a warning (the loader refuses empty sets).
    """
    from .io_utils import atomic_write_json, atomic_write_jsonl

    root = Path(root)
    (root / "manifest.json").unlink(missing_ok=True)
    atomic_write_jsonl(root / "products.jsonl", products)
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "name": name,
        "products": "products.jsonl",
        "query_sets": {},
        "label_sets": {},
        **(extra or {}),
    }
    for kind, sets in (("query", query_sets), ("label", label_sets)):
        for set_name in [name for name, (_, rows) in sets.items() if not rows]:
            logger.warning(
                "%s set %r has no rows in %s: not written (an empty set has no metric)", kind, set_name, root
            )
    query_sets = {name: value for name, value in query_sets.items() if value[1]}
    label_sets = {name: value for name, value in label_sets.items() if value[1]}
    for qname, (spec, rows) in query_sets.items():
        atomic_write_jsonl(root / "queries" / f"{qname}.jsonl", rows)
        manifest["query_sets"][qname] = {**spec, "file": f"queries/{qname}.jsonl"}
    for lname, (spec, rows) in label_sets.items():
        atomic_write_jsonl(root / "labels" / f"{lname}.jsonl", rows)
        manifest["label_sets"][lname] = {**spec, "file": f"labels/{lname}.jsonl"}
    atomic_write_json(root / "manifest.json", manifest)
    return root
