"""train.export: exactly the Hub upload files, a model card that is right on the Hub, and an offline loading check."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from train.export import REFERENCE, write_upload

    out = tmp_path_factory.mktemp("export") / "moon3-mini"
    write_upload(REPO_ROOT, out, "org/moon3-mini", json.loads(REFERENCE.read_text()))
    return out


def test_export_writes_exactly_the_upload_files(exported):
    from train.export import UPLOAD_FILES

    assert {p.name for p in exported.iterdir()} == UPLOAD_FILES
    for name in ("model.safetensors", "tokenizer.json", "modeling_moon3.py"):
        assert (exported / name).read_bytes() == (REPO_ROOT / name).read_bytes()
    auto_map = json.loads((exported / "config.json").read_text())["auto_map"]
    assert all((exported / f"{target.split('.')[0]}.py").is_file() for target in auto_map.values())


def test_model_card_metadata_parses_as_the_hub_reads_it(exported):
    from huggingface_hub import ModelCard

    reference = json.loads((REPO_ROOT / "benchmarks" / "moon3_mini_reference.json").read_text())
    card = ModelCard.load(exported / "README.md")
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "feature-extraction"
    assert data.license == "apache-2.0" and data.language == ["en"]
    assert data.datasets == ["ashraq/fashion-product-images-small"]
    assert data.base_model is None  # moon3-mini is trained from scratch; the card says so
    assert "trained from scratch" in card.text
    results = {(r.task_name, r.metric_type): r.metric_value for r in data.eval_results}
    assert len(results) == len(reference["direct"]["metrics"])
    assert (
        results[("fashion attribute queries", "ndcg_at_10")]
        == reference["direct"]["metrics"]["fashion/retrieval/attribute_queries"]
    )
    assert (
        results[("fashion articleType from photo", "accuracy")]
        == reference["direct"]["metrics"]["fashion/classification/articleType/image"]
    )
    assert "| fashion attribute queries | nDCG@10 | 0.595 | 0.468 |" in card.text


def test_model_card_links_are_absolute(exported):
    text = (exported / "README.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert links and all(link.startswith("https://") for link in links), links


def test_base_model_is_written_when_given(tmp_path):
    from huggingface_hub import ModelCard

    from train.export import REFERENCE, write_upload

    write_upload(
        REPO_ROOT, tmp_path / "out", "org/m", json.loads(REFERENCE.read_text()), base_model="Qwen/Qwen3-VL-2B-Instruct"
    )
    assert ModelCard.load(tmp_path / "out" / "README.md").data.base_model == "Qwen/Qwen3-VL-2B-Instruct"


def test_export_refuses_a_non_empty_folder_and_an_incomplete_checkpoint(exported, tmp_path):
    from train.export import write_upload

    with pytest.raises(FileExistsError, match="not empty"):
        write_upload(REPO_ROOT, exported, "org/m", {"direct": {"metrics": {}}})
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="missing model.safetensors"):
        write_upload(tmp_path / "ckpt", tmp_path / "out", "org/m", {"direct": {"metrics": {}}})
    assert not (tmp_path / "out").exists()


def test_exported_folder_loads_offline_through_automodel_and_sentence_transformers(exported):
    from train.export import check_loads_offline

    checked = check_loads_offline(exported)
    assert checked["embedding_dim"] == json.loads((REPO_ROOT / "config.json").read_text())["embedding_dim"]
