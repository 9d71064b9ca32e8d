"""Benchmark inputs that used to give silently wrong results (issue 15): bad data, stale cache, modes, files."""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from benchmarks.data_format import DataFormatError, load_bench_data


def write_folder(root, products, query_sets=None, label_sets=None):
    """A data folder written file by file, bypassing write_bench_data (which leaves empty sets out)."""
    root.mkdir(parents=True, exist_ok=True)
    manifest = {"format": "moon3-bench", "version": 1, "name": "t", "query_sets": {}, "label_sets": {}}
    (root / "products.jsonl").write_text("".join(json.dumps(p) + "\n" for p in products))
    for name, (spec, rows) in (query_sets or {}).items():
        (root / "queries").mkdir(exist_ok=True)
        (root / "queries" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        manifest["query_sets"][name] = {**spec, "file": f"queries/{name}.jsonl"}
    for name, (spec, rows) in (label_sets or {}).items():
        (root / "labels").mkdir(exist_ok=True)
        (root / "labels" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        manifest["label_sets"][name] = {**spec, "file": f"labels/{name}.jsonl"}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 0, 0)).save(root / "images" / "a.png")
    Image.new("RGB", (8, 8), (0, 0, 200)).save(root / "images" / "b.png")
    return root


def products(*images):
    return [{"id": f"p{i}", "title": f"Product {i}", "images": list(im)} for i, im in enumerate(images)]


TEXT_SET = {"gallery_view": "product"}


def test_empty_query_file_is_refused_at_load(folder):
    write_folder(folder, products(["images/a.png"]), {"q": (TEXT_SET, [])})
    with pytest.raises(DataFormatError, match="queries/q.jsonl, field 'file': the query file holds no query"):
        load_bench_data(folder)


def test_empty_label_file_is_refused_at_load(folder):
    write_folder(folder, products(["images/a.png"]), label_sets={"colour": ({"kind": "attribute"}, [])})
    with pytest.raises(DataFormatError, match="labels/colour.jsonl, field 'file': the label file holds no row"):
        load_bench_data(folder)


def test_write_bench_data_leaves_empty_sets_out_with_a_warning(tmp_path, caplog):
    from benchmarks.data_format import write_bench_data

    with caplog.at_level(logging.WARNING, logger="benchmarks.data_format"):
        root = write_bench_data(tmp_path / "w", "w", products([]), {"q": (TEXT_SET, [])}, {})
    assert "query set 'q' has no rows" in caplog.text
    assert json.loads((root / "manifest.json").read_text())["query_sets"] == {}


@pytest.mark.parametrize("path", ["../../../../etc/passwd", "/etc/passwd", "images/../../outside.png"])
def test_image_paths_must_stay_inside_the_data_folder(folder, path):
    write_folder(folder, products([path]))
    with pytest.raises(DataFormatError, match="leaves the data folder"):
        load_bench_data(folder)


def test_query_image_path_must_stay_inside_the_data_folder(folder):
    query = {"id": "q0", "image": "../secret.png", "positives": ["p0"]}
    write_folder(folder, products(["images/a.png"]), {"q": (TEXT_SET, [query])})
    with pytest.raises(DataFormatError, match=r"queries/q.jsonl, row 1, field 'image'.*leaves the data folder"):
        load_bench_data(folder)


def test_image_view_of_a_product_without_images_is_refused(folder):
    rows = [{"product_id": "p0", "label": "Red"}, {"product_id": "p1", "label": "Blue"}]
    write_folder(folder, products(["images/a.png"], []), label_sets={"c": ({"kind": "attribute"}, rows)})
    with pytest.raises(DataFormatError, match=r"labels/c.jsonl, row 2.*product 'p1' has no image"):
        load_bench_data(folder)


def test_corrupt_image_is_refused_at_load(folder):
    (folder / "images" / "bad.jpg").write_bytes(b"not an image at all")
    write_folder(folder, products(["images/bad.jpg"]))
    with pytest.raises(DataFormatError, match="images/bad.jpg' cannot be read"):
        load_bench_data(folder)


def test_cache_hash_changes_when_an_image_changes_but_not_its_size(folder):
    Image.new("RGB", (8, 8), (200, 0, 0)).save(folder / "images" / "c.bmp")  # BMP: same size for any pixels
    Image.new("RGB", (8, 8), (0, 0, 200)).save(folder / "images" / "d.bmp")
    write_folder(folder, products(["images/c.bmp"]))
    before = load_bench_data(folder)
    shutil.copyfile(folder / "images" / "d.bmp", folder / "images" / "c.bmp")
    after = load_bench_data(folder)
    assert after.hash == before.hash  # same path and byte size: the format-level hash (README reference) is equal
    assert after.cache_hash != before.cache_hash


def test_cache_logs_when_it_reuses_an_entry(tmp_path, caplog):
    from benchmarks.cache import EmbeddingCache

    cache = EmbeddingCache(tmp_path)
    items = [{"text": "a", "image": None}]
    cache.get_or_compute("m@1", "d", "query", "t/q", items, lambda: np.ones((1, 2), np.float32))
    with caplog.at_level(logging.INFO, logger="benchmarks.cache"):
        cache.get_or_compute("m@1", "d", "query", "t/q", items, lambda: np.zeros((1, 2), np.float32))
    assert "cache: reusing 1 query embeddings for t/q" in caplog.text


def test_local_fingerprint_follows_config_edits_and_weight_rewrites(tiny_checkpoint, tmp_path, monkeypatch):
    from benchmarks import encoders

    folder = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    revision, first = encoders.model_fingerprint(str(folder))
    assert revision == "local"
    config = json.loads((folder / "processor_config.json").read_text())
    config["max_text_tokens"] = 7
    (folder / "processor_config.json").write_text(json.dumps(config))
    second = encoders.model_fingerprint(str(folder))[1]
    assert second["processor_config.json"] != first["processor_config.json"]
    monkeypatch.setattr(encoders, "CONTENT_HASH_MAX_BYTES", 0)  # weights as large files: size + mtime, not read
    large = encoders.model_fingerprint(str(folder))[1]
    assert large["model.safetensors"].startswith("size:")
    stat = os.stat(folder / "model.safetensors")
    os.utime(folder / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert encoders.model_fingerprint(str(folder))[1]["model.safetensors"] != large["model.safetensors"]


def test_hub_id_resolves_to_its_cached_commit(tmp_path):
    from benchmarks.encoders import _hub_commit

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--org--moon3"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    assert _hub_commit("org/moon3", None, cache_dir=tmp_path) == commit
    assert _hub_commit("org/unknown", None, cache_dir=tmp_path) is None


def test_reason_default_checkpoint_runs_records_and_caches_as_reason(tiny_checkpoint, tmp_path):
    from benchmarks.encoders import load_model

    folder = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    (folder / "sentence_bert_config.json").write_text(json.dumps({"default_mode": "reason"}))
    default = load_model(str(folder), trust_remote_code=True, device="cpu")
    direct = load_model(str(folder), trust_remote_code=True, device="cpu", mode="direct")
    assert (default.mode, default.query_kwargs, default.document_kwargs) == (
        "reason",
        {"mode": "reason"},
        {"mode": "reason"},
    )
    assert direct.mode == "direct" and direct.cache_key != default.cache_key


def test_moon3_reads_benchmark_images_with_its_own_loader(tiny_checkpoint, tmp_path):
    """A transparent PNG reaches MOON3 as its own loader reads it (on white), by path, not pre-converted to RGB."""
    import torch
    from transformers import AutoModel, AutoProcessor

    from benchmarks.encoders import load_model

    path = tmp_path / "clear.png"
    pixels = np.zeros((32, 32, 4), dtype=np.uint8)
    pixels[8:24, 8:24] = (200, 30, 30, 255)  # an opaque red square on a fully transparent background
    Image.fromarray(pixels, "RGBA").save(path)
    encoder = load_model(str(tiny_checkpoint), trust_remote_code=True, device="cpu", batch_size=2)
    via_benchmark = encoder.encode_queries([{"id": "q1", "text": None, "image": str(path)}])
    model = AutoModel.from_pretrained(tiny_checkpoint, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    own = model.encode([path], processor, kind="query")
    torch.testing.assert_close(torch.from_numpy(via_benchmark), own, atol=1e-5, rtol=0)
    on_black = model.encode([Image.open(path).convert("RGB")], processor, kind="query")
    assert not torch.allclose(own, on_black, atol=1e-3)  # the old benchmark loader gave a different vector


def test_truncation_warning_names_the_item_id(tiny_checkpoint, caplog):
    from benchmarks.encoders import load_model

    encoder = load_model(str(tiny_checkpoint), trust_remote_code=True, device="cpu", batch_size=2)
    encoder.moon3_module.processor.max_text_tokens = 2
    with caplog.at_level(logging.WARNING):
        encoder.encode_documents([{"id": "sku-42", "title": "a long title with many words", "attributes": {}}])
    assert "product (id 'sku-42'): text has" in caplog.text


def test_results_json_is_strict_json_with_umask_permissions(tiny_fashion, tmp_path):
    from benchmarks.run import main, strict_json_metrics

    assert strict_json_metrics({"a": float("nan"), "b": 0.5, "c": None}) == {"a": None, "b": 0.5, "c": None}
    old = os.umask(0o022)
    try:
        out = tmp_path / "out"
        main(
            [
                "--model",
                "random",
                "--data",
                str(tiny_fashion),
                "--tasks",
                "text2image",
                "--out",
                str(out),
                "--no-cache",
                "--no-progress",
            ]
        )
    finally:
        os.umask(old)
    text = (out / "results.json").read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert json.loads(text)["model"]["mode"] == "direct"
    for name in ("results.json", "results.md"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name


def test_measure_memory_has_help_and_refuses_an_empty_folder(tmp_path, capsys):
    from benchmarks import measure_memory

    with pytest.raises(SystemExit) as exit_info:
        measure_memory.main(["--help"])
    assert exit_info.value.code == 0 and "peak" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="holds no"):
        measure_memory.main(["--images", str(tmp_path), "--num-images", "3"])
