"""catalog.search: exact vector search by text and photo, SQL filters, BM25, hybrid fusion, the CLI, the ANN index."""

from __future__ import annotations

import numpy as np
import pytest
from catalog_data import embed_args, good_products, write_jsonl

from catalog.embed import main as embed_main
from catalog.fusion import convex_fusion, normalise, reciprocal_rank_fusion
from catalog.search import CatalogSearch
from catalog.search import main as search_main


@pytest.fixture(scope="module")
def searcher(tmp_path_factory, _tiny_checkpoint_session):
    root = tmp_path_factory.mktemp("catalogue")
    path = write_jsonl(root / "products.jsonl", good_products(root / "images", n=12))
    embed_main(embed_args(_tiny_checkpoint_session, path, root / "out", "--shard-size", "5"))
    return CatalogSearch(root / "out")


def stored(searcher):
    table = searcher.table.to_arrow()
    return table.column("id").to_pylist(), np.array(table.column("vector").to_pylist(), dtype=np.float32), table


def brute_force(searcher, query_vector, keep=None):
    ids, vectors, _ = stored(searcher)
    scores = vectors @ query_vector  # (N,)
    order = [i for i in np.argsort(-scores, kind="stable") if keep is None or ids[i] in keep]
    return [ids[i] for i in order], scores[order]


def test_photo_search_ranks_products_by_cosine_to_the_photo(searcher):
    _, _, table = stored(searcher)
    photo = table.column("image").to_pylist()[0]
    hits = searcher.search(image=photo, k=12)
    expected_ids, expected_scores = brute_force(searcher, searcher.query_vector(image=photo))
    assert [h["id"] for h in hits] == expected_ids
    np.testing.assert_allclose([h["score"] for h in hits], expected_scores, atol=1e-5)


def test_text_and_photo_query_uses_both(searcher):
    _, _, table = stored(searcher)
    photo = table.column("image").to_pylist()[0]
    both = searcher.query_vector("red shoes", photo)
    assert not np.allclose(both, searcher.query_vector("red shoes"))
    assert not np.allclose(both, searcher.query_vector(image=photo))


def test_filter_keeps_only_matching_products_in_vector_order(searcher):
    ids, _, table = stored(searcher)
    women = {i for i, g in zip(ids, table.column("gender").to_pylist()) if g == "Women"}
    hits = searcher.search(text="red running shoes", filter="gender = 'Women'", k=12)
    expected, _ = brute_force(searcher, searcher.query_vector("red running shoes"), keep=women)
    assert [h["id"] for h in hits] == expected and len(expected) == 6


def test_filter_with_in_and_and(searcher):
    hits = searcher.search(text="shirt", filter="baseColour IN ('Red', 'Black') AND gender = 'Men'", k=12)
    assert sorted(h["title"].rsplit(" ", 1)[0] for h in hits) == ["Puma Men Black Track Pants"] * 3


def test_bad_filter_names_the_columns(searcher):
    with pytest.raises(ValueError, match="Columns you can filter on: .*gender"):
        searcher.search(text="shirt", filter="no_such_column = 'x'")


def test_bm25_puts_the_products_that_name_the_words_first(searcher):
    hits = searcher.search(text="fabindia kurta", bm25=True, k=5)
    assert [h["id"] for h in hits[:3]] == sorted({"p3", "p7", "p11"}, key=[h["id"] for h in hits].index)
    assert all("Fabindia" in h["title"] for h in hits[:3]) and len(hits) == 3  # no other product has the words


def test_rrf_on_a_hand_built_case():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "d", "a"]], k=1)
    # a: 1/2 + 1/4, c: 1/4 + 1/2 (tie: both best rank 1, a's list comes first), b: 1/3, d: 1/3 (tie: b's list first)
    assert fused == [("a", 0.75), ("c", 0.75), ("b", 1 / 3), ("d", 1 / 3)]
    weighted = reciprocal_rank_fusion([["a", "b"], ["b", "a"]], weights=[1.0, 3.0], k=0)
    assert weighted == [("b", 0.5 + 3.0), ("a", 1.0 + 1.5)]
    with pytest.raises(ValueError, match="one weight per ranking"):
        reciprocal_rank_fusion([["a"]], weights=[1, 2])


def test_convex_fusion_on_a_hand_built_case():
    cosine = {"a": 0.9, "b": 0.5, "c": 0.1, "d": 0.3}  # min-max: a 1, b 0.5, c 0, d 0.25
    bm25 = {"a": 0.0, "b": 6.0, "c": 6.0, "d": 3.0}  # min-max: a 0, b 1, c 1, d 0.5
    fused = convex_fusion([cosine, bm25], weights=[0.2, 0.8])
    # b 0.1 + 0.8, c 0 + 0.8 (BM25 tie broken by the cosine), d 0.05 + 0.4, a 0.2 + 0
    assert [i for i, _ in fused] == ["b", "c", "d", "a"]
    assert [s for _, s in fused] == pytest.approx([0.9, 0.8, 0.45, 0.2])
    # equal weights: the ranker with the wider normalised spread decides; all-equal scores normalise to 1 / 0
    assert [i for i, _ in convex_fusion([cosine, bm25], weights=[1, 1])] == ["b", "a", "c", "d"]
    assert normalise({"x": 2.0, "y": 2.0}) == {"x": 1.0, "y": 1.0}
    assert normalise({"x": 2.0, "y": 2.0}, "zscore") == {"x": 0.0, "y": 0.0}
    z = normalise({"x": 1.0, "y": 3.0}, "zscore")
    assert (z["x"], z["y"]) == pytest.approx((-1.0, 1.0))
    with pytest.raises(ValueError, match="different set of ids"):
        convex_fusion([{"a": 1.0}, {"b": 1.0}])
    with pytest.raises(ValueError, match="normalisation must be one of"):
        convex_fusion([{"a": 1.0}], normalisation="rank")


def test_hybrid_candidates_carry_the_exact_cosine_and_bm25_of_every_product(searcher):
    query = "fabindia kurta"  # BM25 matches only p3, p7 and p11
    vector = searcher.query_vector(query)
    pool = searcher.hybrid_candidates(query, vector, candidates=4)
    assert len(pool.vector_ids) == 4 and set(pool.text_ids) == {"p3", "p7", "p11"}
    assert set(pool.hits) == set(pool.cosine) == set(pool.bm25) == set(pool.vector_ids) | set(pool.text_ids)
    ids, _ = brute_force(searcher, vector)
    exact_ids, exact_scores = brute_force(searcher, vector, keep=set(pool.hits))
    assert {i: pytest.approx(s, abs=1e-5) for i, s in zip(exact_ids, exact_scores)} == pool.cosine
    all_bm25 = {h["id"]: h["score"] for h in searcher.text_search(query, k=12)}
    assert pool.bm25 == {i: pytest.approx(all_bm25.get(i, 0.0)) for i in pool.hits}  # 0 where no word matches


def test_hybrid_default_is_the_convex_fusion_of_the_pool_and_rrf_is_an_option(searcher):
    from catalog.search import DEFAULT_WEIGHTS

    query = "turtle navy blue shirt"
    vector = searcher.query_vector(query)
    pool = searcher.hybrid_candidates(query, vector, candidates=12)
    hits = searcher.search(text=query, hybrid=True, k=12, candidates=12)
    expected = convex_fusion([pool.cosine, pool.bm25], DEFAULT_WEIGHTS["convex"])
    assert [(h["id"], pytest.approx(h["score"])) for h in hits] == [(i, pytest.approx(s)) for i, s in expected]
    assert hits[0]["id"] in {"p1", "p5", "p9"}  # the Turtle shirts: top of BM25, so top of the fusion
    rrf = searcher.search(text=query, hybrid=True, k=12, candidates=12, fusion="rrf")
    vector_ids = [h["id"] for h in searcher.vector_search(vector, k=12)]
    text_ids = [h["id"] for h in searcher.text_search(query, k=12)]
    expected = reciprocal_rank_fusion([vector_ids, text_ids])
    assert [(h["id"], pytest.approx(h["score"])) for h in rrf] == [(i, pytest.approx(s)) for i, s in expected]
    filtered = searcher.search(text=query, hybrid=True, k=12, filter="gender = 'Women'")
    assert filtered and all(h["id"] in {"p0", "p3", "p4", "p7", "p8", "p11"} for h in filtered)
    with pytest.raises(ValueError, match="need a text query"):
        searcher.search(image=stored(searcher)[2].column("image").to_pylist()[0], hybrid=True)
    with pytest.raises(ValueError, match="fusion must be one of"):
        searcher.search(text=query, hybrid=True, fusion="sum")


def test_cli_prints_rank_score_id_and_title(searcher, capsys):
    hits = search_main(["--db", str(searcher.db), "--query", "white kurta", "-k", "3", "--filter", "gender = 'Women'"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 == len(hits)
    rank, score, product_id, title = lines[0].split(maxsplit=3)
    assert (rank, product_id, title) == ("1", hits[0]["id"], hits[0]["title"])
    assert float(score) == pytest.approx(hits[0]["score"], abs=1e-4)


def test_ann_index_is_built_from_the_threshold_and_finds_the_exact_neighbours(tmp_path):
    import pyarrow as pa

    from catalog.store import open_table, write_table

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((600, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"v{i}" for i in range(600)]
    table = pa.table(
        {"id": ids, "title": ids, "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 16)}
    )
    timings = write_table(tmp_path, table, ann_min_rows=500, fts=False, num_partitions=2)
    assert timings["vector_index_s"] > 0
    lance_table = open_table(tmp_path)
    assert [index.index_type for index in lance_table.list_indices()] == ["IvfHnswSq"]  # the default type
    searcher = CatalogSearch(tmp_path, model="unused", nprobes=4, refine_factor=50)
    hits = searcher.vector_search(vectors[7], k=10)
    assert [h["id"] for h in hits] == [ids[i] for i in np.argsort(-(vectors @ vectors[7]), kind="stable")[:10]]
