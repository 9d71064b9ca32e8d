"""catalog.evaluate end to end on the tiny model, its top-10 ranks = the full ranking's metrics; speed script runs."""

from __future__ import annotations

import numpy as np
import pytest
from catalog_data import tiny_bench_fashion

from benchmarks.metrics import ndcg_at_k, positive_ranks, recall_at_k
from catalog.evaluate import main as evaluate_main
from catalog.evaluate import ranks_from_hits, shuffle_ties


def test_top10_ranks_give_the_full_rankings_ndcg_and_recall():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((30, 50))  # (Q, N)
    positives = [sorted(rng.choice(50, size=rng.integers(1, 15), replace=False).tolist()) for _ in range(30)]
    full = positive_ranks(scores, positives)
    ids = [f"d{i}" for i in range(50)]
    top10 = [
        ranks_from_hits([ids[j] for j in np.argsort(-row, kind="stable")[:10]], [ids[p] for p in pos])
        for row, pos in zip(scores, positives)
    ]
    assert ndcg_at_k(top10, 10) == pytest.approx(ndcg_at_k(full, 10))
    assert recall_at_k(top10, 10) == pytest.approx(recall_at_k(full, 10))


@pytest.mark.slow  # builds a LanceDB IVF_PQ index: about 5 s idle, over 30 s on the loaded 2-core machine
def test_speed_catalog_index_part_reports_exact_recall_one(tmp_path):
    from benchmarks.speed_catalog import main

    results = main(["--products", "0", "--sizes", "600", "--queries", "5", "--dim", "16", "--clusters", "10",
                    "--index-types", "IVF_HNSW_SQ", "--out", str(tmp_path / "speed.json")])  # fmt: skip
    exact, hnsw = results["index"]
    assert (exact["index"], exact["recall@10"], exact["build_s"]) == ("none (exact scan)", 1.0, 0.0)
    assert hnsw["index"] == "IVF_HNSW_SQ" and 0.0 <= hnsw["recall@10"] <= 1.0 and hnsw["build_s"] > 0
    assert (tmp_path / "speed.json").is_file()


def test_speed_catalog_engine_names_are_parsed_or_refused():
    from benchmarks.speed_catalog import parse_engine

    assert [parse_engine(n) for n in ("local", "local1", "ray2")] == [("local", None), ("local", 1), ("ray", 2)]
    for bad in ("ray", "ray0", "local-2", "gpu1"):
        with pytest.raises(ValueError, match="unknown engine"):
            parse_engine(bad)


def test_speed_catalog_repeats_every_local_engine_and_restores_threads(tmp_path, _tiny_checkpoint_session):
    import torch
    from catalog_data import good_products, write_jsonl

    from benchmarks.speed_catalog import main

    products = write_jsonl(tmp_path / "p.jsonl", good_products(tmp_path / "images", n=4))
    threads = torch.get_num_threads()
    results = main(["--model", str(_tiny_checkpoint_session), "--input", str(products), "--products", "4",
                    "--engines", "local", "local1", "--repeats", "2", "--sizes"])  # fmt: skip
    assert torch.get_num_threads() == threads
    rows = {row["engine"]: row for row in results["embedding"]}
    assert rows.keys() == {"local", "local1"} and results["index"] == []
    for row in rows.values():
        assert len(row["runs_s"]) == 2 and row["seconds"] == pytest.approx(float(np.median(row["runs_s"])))
        assert row["products_per_s"] == pytest.approx(4 / row["seconds"])


def test_evaluate_end_to_end_matches_benchmarks_and_sweeps_the_fusion(tmp_path, _tiny_checkpoint_session, capsys):
    data = tiny_bench_fashion(tmp_path, n=12)
    out = tmp_path / "eval"
    results = evaluate_main(["--model", str(_tiny_checkpoint_session), "--data", str(data), "--out", str(out),
                             "--convex-weights", "0", "1", "--rrf-weights", "1", "--candidates", "5", "100",
                             "--bm25-tie-orders", "3"])  # fmt: skip
    t2p, i2p = results["query_sets"]["text2product"], results["query_sets"]["image2product"]
    # catalogue vector search = benchmarks' RetrievalTask on the same vectors (exact search, same metrics)
    for row in (t2p, i2p):
        assert row["catalog vector"] == pytest.approx(row["benchmarks.run model"], abs=1e-6)
    # each query names its product's unique brand word, so BM25 finds it first
    assert t2p["catalog bm25"]["ndcg@10"] == pytest.approx(1.0)
    assert t2p["catalog bm25 random tie orders"]["orders"] == 3
    # convex fusion with all weight on the vector side ranks the candidate union by cosine: vector search's top 10
    assert t2p["catalog hybrid convex minmax w=1 c=100"] == pytest.approx(t2p["catalog vector"])
    assert {"catalog hybrid (default: convex minmax w=0.1 c=100)", "catalog hybrid rrf w=1 c=5"} <= t2p.keys()
    assert "catalog bm25" not in i2p and "catalog hybrid rrf w=1 c=5" not in i2p  # photo queries: no words
    printed = capsys.readouterr().out
    assert "| text2product | catalog bm25 | 1.000 |" in printed and "best hybrid nDCG@10 on text2product:" in printed
    assert (out / "results.json").is_file()


def test_shuffle_ties_keeps_the_score_order_and_permutes_only_ties():
    scores = {"a": 2.0, "b": 1.0, "c": 1.0, "d": 1.0, "e": 0.5}
    orders = {tuple(shuffle_ties(list(scores), scores, np.random.default_rng(seed))) for seed in range(30)}
    assert all(o[0] == "a" and o[-1] == "e" and set(o[1:4]) == {"b", "c", "d"} for o in orders)
    assert len(orders) == 6  # all orders of the three tied ids occur
