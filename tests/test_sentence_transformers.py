"""sentence-transformers interface: SentenceTransformer(checkpoint, trust_remote_code=True).encode(...).

Every equivalence test compares against `Moon3Model.encode`, the model's own embedding call, at 1e-5 (fp32).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT

ATOL = 1e-5


@pytest.fixture(scope="module")
def st_module():
    from train.write_st_files import load_st_module

    return load_st_module()


def wrap(st_module, model, processor, **module_kwargs):
    """An in-memory SentenceTransformer around a MOON3 model, configured as write_st_files configures a folder."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(
        modules=[st_module.Moon3SentenceTransformer(model, processor, **module_kwargs)],
        prompts={"query": processor.query_instruction, "document": processor.product_instruction},
        similarity_fn_name="cosine",
        device="cpu",
    )


@pytest.fixture
def st_tiny(st_module, tiny_model):
    """(SentenceTransformer, Moon3Model, Moon3Processor) for each backbone family."""
    model, processor = tiny_model
    return wrap(st_module, model, processor), model, processor


@pytest.fixture(scope="module")
def _st_checkpoint_session(_tiny_checkpoint_session):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(_tiny_checkpoint_session), trust_remote_code=True, device="cpu")


@pytest.fixture
def image_file(tmp_path, product_images) -> Path:
    path = tmp_path / "query.png"
    product_images["wide"].save(path)
    return path


def make_products(product_images, image_file):
    return [
        {"title": "Turtle Check Men Navy Blue Shirt", "attributes": {"colour": "Navy Blue"}, "images": [image_file]},
        {"title": "Nike Women Red Running Shoes", "attributes": {"gender": "Women", "type": ["Shoes"]}},
        {"images": [product_images["rgba"], product_images["gray"]], "description": "red dress"},
    ]


def make_queries(product_images, image_file):
    """Queries as the model's own call takes them (an image path as a pathlib.Path)."""
    return [
        "men navy blue casual shirts",
        product_images["red"],
        image_file,
        {"text": "red shoes", "image": product_images["wide"]},
    ]


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.float().cpu().numpy()


# ---------------------------------------------------------------- files and loading


def test_root_st_files_match_generator(st_module):
    from moon3 import configuration_moon3

    expected = st_module.st_files(
        configuration_moon3.DEFAULT_PRODUCT_INSTRUCTION, configuration_moon3.DEFAULT_QUERY_INSTRUCTION
    )
    for name, content in expected.items():
        on_disk = json.loads((REPO_ROOT / name).read_text(encoding="utf-8"))
        if name == "config_sentence_transformers.json":
            on_disk.pop("__version__")
            content = {key: value for key, value in content.items() if key != "__version__"}
        assert on_disk == content, f"{name} is stale: run `python -m train.write_st_files --checkpoint .`"


def test_checkpoint_prompts_agree_with_processor_instructions(tiny_checkpoint):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    config = json.loads((tiny_checkpoint / "config_sentence_transformers.json").read_text(encoding="utf-8"))
    assert config["prompts"] == {"query": processor.query_instruction, "document": processor.product_instruction}
    assert config["similarity_fn_name"] == "cosine"
    assert "sentence_transformers" in config["requirements"]


def test_write_st_files_cli_uses_the_folders_own_instructions(tmp_path):
    from train.write_st_files import main

    (tmp_path / "processor_config.json").write_text(
        json.dumps({"product_instruction": "P instr", "query_instruction": "Q instr"}), encoding="utf-8"
    )
    main(["--checkpoint", str(tmp_path), "--default-mode", "reason"])
    config = json.loads((tmp_path / "config_sentence_transformers.json").read_text(encoding="utf-8"))
    assert config["prompts"] == {"query": "Q instr", "document": "P instr"}
    assert json.loads((tmp_path / "sentence_bert_config.json").read_text())["default_mode"] == "reason"
    assert (tmp_path / "sentence_transformers_moon3.py").read_text() == (
        REPO_ROOT / "sentence_transformers_moon3.py"
    ).read_text()


@pytest.mark.slow
def test_checkpoint_loads_offline_in_a_fresh_process(tiny_checkpoint):
    code = (
        "import sys\n"
        "from sentence_transformers import SentenceTransformer\n"
        "model = SentenceTransformer(sys.argv[1], trust_remote_code=True)\n"
        "out = model.encode(['navy shirt', {'title': 'Red dress', 'attributes': {'colour': 'red'}}])\n"
        "print('shape', out.shape, model.similarity_fn_name)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(tiny_checkpoint)], capture_output=True, text=True, env=env, timeout=1800
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "shape (2, 32) cosine" in result.stdout


def test_loaded_model_reports_dimension_and_modalities(_st_checkpoint_session):
    model = _st_checkpoint_session
    assert model.get_embedding_dimension() == 32
    assert model.similarity_fn_name == "cosine"
    assert model.supports("image") and model.supports(("image", "text"))


# ---------------------------------------------------------------- equivalence with Moon3Model.encode


def test_encode_query_matches_model_encode(st_tiny, product_images, image_file):
    st, model, processor = st_tiny
    queries = make_queries(product_images, image_file)
    st_inputs = ["men navy blue casual shirts", product_images["red"], str(image_file), queries[3]]
    expected = model.encode(queries, processor, kind="query", batch_size=8)
    got = st.encode_query(st_inputs, batch_size=8)
    np.testing.assert_allclose(got, as_numpy(expected), atol=ATOL)


def test_encode_document_matches_model_encode(st_tiny, product_images, image_file):
    st, model, processor = st_tiny
    products = make_products(product_images, image_file)
    expected = model.encode(products, processor, kind="document", batch_size=8)
    np.testing.assert_allclose(st.encode_document(products, batch_size=8), as_numpy(expected), atol=ATOL)


def test_encode_document_reads_strings_as_titles_and_dicts_as_title_plus_images(st_tiny, product_images):
    st, model, processor = st_tiny
    image = product_images["red"]
    expected = model.encode(
        [{"title": "red shirt"}, {"images": [image]}, {"title": "red", "image": image}], processor, kind="document"
    )
    got = st.encode_document(["red shirt", image, {"text": "red", "image": image}])
    np.testing.assert_allclose(got, as_numpy(expected), atol=ATOL)


def test_plain_encode_of_a_mixed_batch_routes_products_to_documents(st_tiny, product_images, image_file):
    st, model, processor = st_tiny
    products = make_products(product_images, image_file)
    queries = make_queries(product_images, image_file)
    expected = np.concatenate(
        [
            as_numpy(model.encode(products, processor, kind="document")),
            as_numpy(model.encode(queries, processor, kind="query")),
        ]
    )
    st_queries = [str(q) if isinstance(q, Path) else q for q in queries]
    got = st.encode(products + st_queries, batch_size=16)
    np.testing.assert_allclose(got, expected, atol=ATOL)


def test_small_batches_with_progress_bar_match_one_batch(st_tiny, product_images, image_file, capsys):
    st, _, _ = st_tiny
    inputs = make_products(product_images, image_file) + ["navy shirt", product_images["red"]]
    full = st.encode(inputs, batch_size=16)
    batched = st.encode(inputs, batch_size=2, show_progress_bar=True)
    np.testing.assert_allclose(batched, full, atol=ATOL)
    assert "Batches" in capsys.readouterr().err


def make_chatty(model, processor) -> None:
    """Zero the output rows of the added (special) tokens, so that the random model's greedy reasoning is visible text
    rather than special tokens that decode to ''. The weights are tied, so inputs change too; both sides share them."""
    with torch.no_grad():
        model.get_output_embeddings().weight[list(processor.tokenizer.get_added_vocab().values())] = 0


def test_reason_mode_matches_model_and_returns_the_reasoning(st_tiny, product_images):
    st, model, processor = st_tiny
    make_chatty(model, processor)
    queries = [
        "men navy blue casual shirts",
        product_images["red"],
        {"text": "red shoes", "image": product_images["wide"]},
    ]
    expected, expected_reasoning = model.encode(
        queries, processor, kind="query", mode="reason", batch_size=8, return_reasoning=True
    )
    outputs = st.encode_query(queries, mode="reason", output_value=None, batch_size=8)
    got = torch.stack([output["sentence_embedding"] for output in outputs])
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert st[0].decode_reasoning(outputs) == expected_reasoning
    assert all(reasoning.strip() for reasoning in expected_reasoning)
    vectors_only = st.encode_query(queries, mode="reason", batch_size=8)
    np.testing.assert_allclose(vectors_only, as_numpy(expected), atol=ATOL)


def test_reason_mode_budget_is_forwarded(st_tiny):
    st, model, processor = st_tiny
    expected = model.encode(["navy shirt"], processor, kind="query", mode="reason")
    model.config.max_reasoning_tokens = 0  # the encode kwarg below must win over this
    outputs = st.encode_query(["navy shirt"], mode="reason", max_reasoning_tokens=6, output_value=None)
    torch.testing.assert_close(outputs[0]["sentence_embedding"], expected[0], atol=ATOL, rtol=0)


def test_default_mode_reason_from_module_config(st_module, tiny_model):
    model, processor = tiny_model
    st = wrap(st_module, model, processor, default_mode="reason")
    expected = model.encode(["navy shirt"], processor, kind="query", mode="reason")
    np.testing.assert_allclose(st.encode_query(["navy shirt"]), as_numpy(expected), atol=ATOL)


@pytest.mark.parametrize("dim", [8, 16, 32])
def test_truncate_dim_matches_model_for_every_matryoshka_dim(st_tiny, product_images, dim):
    st, model, processor = st_tiny
    assert dim in model.config.matryoshka_dims
    queries = ["navy shirt", product_images["red"]]
    expected = model.encode(queries, processor, kind="query", truncate_dim=dim)
    got = st.encode_query(queries, truncate_dim=dim, normalize_embeddings=True)
    assert got.shape == (2, dim)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(got, as_numpy(expected), atol=ATOL)


def test_custom_prompt_replaces_the_instruction(st_tiny):
    st, model, processor = st_tiny
    custom = copy.copy(processor)
    custom.query_instruction = "Find shoes for this shopper."
    expected = model.encode(["red shoes"], custom, kind="query")
    got = st.encode_query(["red shoes"], prompt="Find shoes for this shopper.")
    np.testing.assert_allclose(got, as_numpy(expected), atol=ATOL)
    assert not np.allclose(got, st.encode_query(["red shoes"]), atol=1e-3)


@pytest.mark.parametrize("mode", ["direct", "reason"])
def test_save_and_reload_round_trip(st_tiny, tmp_path, product_images, mode):
    from sentence_transformers import SentenceTransformer

    st, model, processor = st_tiny
    st.save(str(tmp_path / "st"))
    reloaded = SentenceTransformer(str(tmp_path / "st"), trust_remote_code=True, device="cpu")
    queries = ["navy shirt", product_images["red"]]
    products = [{"title": "Red dress", "attributes": {"colour": "red"}, "images": [product_images["gray"]]}]
    np.testing.assert_allclose(
        reloaded.encode_query(queries, mode=mode),
        as_numpy(model.encode(queries, processor, kind="query", mode=mode)),
        atol=ATOL,
    )
    np.testing.assert_allclose(
        reloaded.encode_document(products, mode=mode),
        as_numpy(model.encode(products, processor, kind="document", mode=mode)),
        atol=ATOL,
    )
    config = json.loads((tmp_path / "st" / "config_sentence_transformers.json").read_text(encoding="utf-8"))
    assert config["prompts"]["query"] == processor.query_instruction
    assert "requirements" in config


def test_checkpoint_loaded_model_matches_its_own_model_encode(_st_checkpoint_session, product_images):
    st = _st_checkpoint_session
    inner = st[0]
    queries = ["navy shirt", product_images["red"]]
    expected = inner.model.encode(queries, inner.processor, kind="query")
    np.testing.assert_allclose(st.encode_query(queries), as_numpy(expected), atol=ATOL)


# ---------------------------------------------------------------- large catalogues


@pytest.mark.slow
def test_two_cpu_processes_match_one_process(_st_checkpoint_session, product_images):
    st = _st_checkpoint_session
    catalogue = [
        {"title": f"Product {index}", "attributes": {"colour": ["red", "navy", "black"][index % 3]}}
        for index in range(10)
    ] + [{"title": "Photo product", "images": [product_images["red"]]}]
    single = st.encode_document(catalogue, batch_size=4)
    multi = st.encode_document(catalogue, batch_size=4, device=["cpu", "cpu"], chunk_size=4)
    np.testing.assert_allclose(multi, single, atol=ATOL)


# ---------------------------------------------------------------- bad inputs


def test_empty_list_returns_an_empty_array(st_tiny):
    st, model, processor = st_tiny
    out = st.encode([])
    assert isinstance(out, np.ndarray) and out.size == 0
    assert model.encode([], processor).shape == (0, model.config.embedding_dim)


@pytest.mark.parametrize(
    "bad_input, error, match",
    [
        ({"text": "shirt", "colour": "red"}, ValueError, "unknown keys \\['colour'\\]"),
        (None, ValueError, "cannot encode the input None: input is None"),
        ({"text": None}, ValueError, "text is None"),
        ({}, ValueError, "empty dict"),
        (3, TypeError, "type int"),
        ("missing_photo.jpg", ValueError, "no such file exists"),
        ("https://example.com/shirt.jpg", ValueError, "does not download"),
        ({"title": "Shirt", "attributes": {"colour": None}}, ValueError, "attributes\\['colour'\\] is None"),
    ],
)
def test_bad_inputs_raise_clear_errors(st_tiny, bad_input, error, match):
    st, _, _ = st_tiny
    with pytest.raises(error, match=match):
        st.encode(["a good query", bad_input])


def test_unreadable_image_file_names_the_file(st_tiny, tmp_path):
    st, _, _ = st_tiny
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image"):
        st.encode([str(broken)])


def test_product_record_as_query_is_rejected(st_tiny):
    st, _, _ = st_tiny
    with pytest.raises(ValueError, match="encode_document"):
        st.encode_query([{"title": "Red dress"}])


def test_unknown_mode_is_rejected(st_tiny):
    st, _, _ = st_tiny
    with pytest.raises(ValueError, match="mode must be one of"):
        st.encode(["navy shirt"], mode="think")


# ---------------------------------------------------------------- speed script


def test_speed_measure_returns_one_row_per_case_and_mode(st_tiny, product_images):
    from benchmarks.speed_sentence_transformers import format_table, measure

    st, model, processor = st_tiny
    products = [{"title": "Red dress", "images": [product_images["red"]]}]
    queries = [{"text": "red dress", "image": product_images["wide"]}]
    rows = measure(model, processor, st, products, queries, batch_size=2, modes=("direct", "reason"), repeats=1)
    assert [(row["case"], row["mode"]) for row in rows] == [
        (case, mode) for mode in ("direct", "reason") for case in ("products", "queries", "mixed")
    ]
    assert [row["items"] for row in rows] == [1, 1, 2] * 2
    for row in rows:
        assert row["ratio"] == pytest.approx(row["st_encode_s"] / row["model_encode_s"])
    assert "SentenceTransformer.encode" in format_table(rows)


def test_speed_script_help_runs_without_building_a_model():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.speed_sentence_transformers", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=1800,  # a hang guard only: a busy machine can take minutes to import
    )
    assert result.returncode == 0 and "--num-items" in result.stdout
