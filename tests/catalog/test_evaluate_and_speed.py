"""catalog.evaluate's top-10 ranks give the metrics of the full ranking; the speed script's index part runs."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.metrics import ndcg_at_k, positive_ranks, recall_at_k
from catalog.evaluate import ranks_from_hits


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
