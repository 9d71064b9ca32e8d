"""End to end: benchmarks.run main() with the random encoder, the cache, atomic outputs, and compare."""

import json

import numpy as np
import pytest

from benchmarks import build_tasks
from benchmarks.data_format import load_bench_data


def _run(tiny_fashion, tiny_abt_buy, tmp_path, model="random", extra=()):
    from benchmarks.run import main

    out = tmp_path / f"out-{model}"
    results = main(
        [
            "--model",
            model,
            "--data",
            str(tiny_fashion),
            str(tiny_abt_buy),
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-progress",
            *extra,
        ]
    )
    return out, results


def test_run_writes_json_markdown_and_plots(tiny_fashion, tiny_abt_buy, tmp_path):
    out, results = _run(tiny_fashion, tiny_abt_buy, tmp_path)
    saved = json.loads((out / "results.json").read_text())
    assert saved["metrics"] == results["metrics"]
    assert saved["model"]["name"] == "random" and saved["seed"] == 0
    assert {d["name"] for d in saved["data"]} == {"fashion", "abt-buy"}
    assert "fashion/retrieval/text2image/recall@1" in saved["metrics"]
    assert "abt-buy/retrieval/matching/mrr" in saved["metrics"]
    assert saved["versions"]["numpy"] == np.__version__
    timings = saved["timings"]
    assert timings["total_s"] >= timings["load_model_s"] >= 0
    assert timings["cache_misses"] > 0  # a first run into an empty cache embeds (tasks sharing items then hit)
    assert "| fashion/retrieval/text2image |" in (out / "results.md").read_text()
    for png in ("recall_at_k.png", "primary_metrics.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_second_run_hits_the_cache_with_same_metrics(tiny_fashion, tiny_abt_buy, tmp_path):
    _, first = _run(tiny_fashion, tiny_abt_buy, tmp_path)
    _, second = _run(tiny_fashion, tiny_abt_buy, tmp_path)
    assert second["timings"]["cache_misses"] == 0 and second["timings"]["cache_hits"] > 0
    assert first["metrics"] == second["metrics"]


def test_text_only_model_reports_null_not_zero(tiny_fashion, tiny_abt_buy, tmp_path):
    out, results = _run(tiny_fashion, tiny_abt_buy, tmp_path, model="bm25")
    assert results["metrics"]["fashion/retrieval/text2image/recall@1"] is None
    assert results["tasks"]["fashion/retrieval/text2image"]["status"] == "n/a"
    assert "n/a" in (out / "results.md").read_text()


def test_task_selection_by_family_and_name(tiny_fashion):
    data = load_bench_data(tiny_fashion)
    assert {t.family for t in build_tasks(data, ["attributes"])} == {"attributes"}
    assert [t.name for t in build_tasks(data, ["text2image"])] == ["fashion/retrieval/text2image"]


def test_crashed_run_leaves_no_results_file(tiny_fashion, tiny_abt_buy, tmp_path, monkeypatch):
    from benchmarks.tasks.zero_shot import ZeroShotTask

    def crash(self, model):
        raise RuntimeError("boom")

    monkeypatch.setattr(ZeroShotTask, "evaluate", crash)
    with pytest.raises(RuntimeError, match="boom"):
        _run(tiny_fashion, tiny_abt_buy, tmp_path)
    assert not (tmp_path / "out-random").exists() or not list((tmp_path / "out-random").iterdir())


def test_compare_prints_side_by_side(tiny_fashion, tiny_abt_buy, tmp_path, capsys):
    from benchmarks.compare import main

    out_random, _ = _run(tiny_fashion, tiny_abt_buy, tmp_path)
    out_bm25, _ = _run(tiny_fashion, tiny_abt_buy, tmp_path, model="bm25")
    table = main([str(out_random / "results.json"), str(out_bm25 / "results.json")])
    assert table.splitlines()[0] == "| metric | random | bm25 |"
    assert "| fashion/retrieval/text2image/ndcg@10 |" in table and "n/a" in table


def test_every_cli_has_help(capsys):
    from benchmarks import compare, convert_abt_buy, convert_fashion, run, speed_retrieval

    for module in (run, compare, convert_fashion, convert_abt_buy, speed_retrieval):
        with pytest.raises(SystemExit) as exit_info:
            module.main(["--help"])
        assert exit_info.value.code == 0


def test_cache_entry_is_shared_by_tasks_that_embed_the_same_items(tmp_path):
    import numpy as np

    from benchmarks.cache import EmbeddingCache

    cache = EmbeddingCache(tmp_path)
    items = [{"text": None, "image": "a.jpg"}]
    first = cache.get_or_compute("m@1", "d", "document", "colour", items, lambda: np.ones((1, 2), np.float32))
    second = cache.get_or_compute("m@1", "d", "document", "gender", items, lambda: np.zeros((1, 2), np.float32))
    assert (first == second).all() and (cache.hits, cache.misses) == (1, 1)
    cache.get_or_compute("m@1", "d", "query", "gender", items, lambda: np.zeros((1, 2), np.float32))
    assert cache.misses == 2


@pytest.mark.slow  # loads a tiny MOON3 through sentence-transformers: ~10 s
def test_progress_shows_tasks_and_batches_with_an_estimate(tiny_fashion, tiny_checkpoint, tmp_path, capsys):
    """Without --no-progress a run shows one bar over its tasks and one over each embedding's batches, each with the
    time it estimates is left (tqdm's `[elapsed<remaining, ...]`)."""
    import re

    from benchmarks.run import main

    main(
        ["--model", str(tiny_checkpoint), "--trust-remote-code", "--device", "cpu", "--batch-size", "2",
         "--data", str(tiny_fashion), "--tasks", "text2image", "image2text",
         "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert re.search(r"tasks: +100%.*\| 2/2 \[\d\d:\d\d<\d\d:\d\d", err), err[-2000:]
    batches = re.findall(r"Batches: +\d+%[^|]*\|[^|]*\| \d+/(\d+) \[\d\d:\d\d<\d\d:\d\d", err)
    assert batches and max(int(total) for total in batches) > 1, err[-2000:]  # batch size 2: several batches
