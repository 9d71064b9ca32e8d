"""catalog.embed with the local engine: shards, rejects file, reasoning, resume after a real SIGKILL."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from catalog_data import embed_args, good_products, write_jsonl

from catalog.embed import main
from catalog.shards import read_shards

REPO_ROOT = Path(__file__).resolve().parents[2]


def shard_vectors(out: Path) -> tuple[list[str], np.ndarray]:
    table = read_shards(out)
    return table.column("id").to_pylist(), np.array(table.column("vector").to_pylist(), dtype=np.float32)


def test_embed_writes_rejects_and_vectors_equal_to_encode(catalogue, tiny_checkpoint, tmp_path):
    from catalog.embedder import CatalogEmbedder, model_input
    from catalog.records import read_catalog

    out = tmp_path / "out"
    manifest = main(embed_args(tiny_checkpoint, catalogue, out, "--shard-size", "3", "--batch-size", "2"))
    assert (manifest["num_products"], manifest["num_rejects"], manifest["num_shards"]) == (8, 5, 3)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["row"], r["id"]) for r in rejects] == [(4, "bad-image"), (7, "bad-field"), (8, None),
                                                      (12, "bad-type"), (13, "p0")]  # fmt: skip
    ids, vectors = shard_vectors(out)
    assert ids == [f"p{i}" for i in range(8)]
    products, _ = read_catalog(catalogue)
    embedder = CatalogEmbedder(str(tiny_checkpoint))
    expected = embedder.model.encode([model_input(p) for p in products], embedder.processor, kind="document")
    np.testing.assert_allclose(vectors, expected.numpy(), atol=1e-5)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_reason_mode_stores_reasoning_beside_the_vector(tiny_checkpoint, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", good_products(tmp_path / "images", n=3))
    out = tmp_path / "out"
    main(embed_args(tiny_checkpoint, path, out, "--mode", "reason", "--skip-index"))
    reasoning = read_shards(out).column("reasoning").to_pylist()
    assert len(reasoning) == 3 and all(isinstance(r, str) for r in reasoning)
    direct = tmp_path / "direct"
    main(embed_args(tiny_checkpoint, path, direct, "--skip-index"))
    assert read_shards(direct).column("reasoning").to_pylist() == [None] * 3


def test_rerun_with_another_job_in_the_folder_is_refused(catalogue, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    main(embed_args(tiny_checkpoint, catalogue, out, "--skip-index"))
    with pytest.raises(ValueError, match="shard_size was 1024, now 4"):
        main(embed_args(tiny_checkpoint, catalogue, out, "--skip-index", "--shard-size", "4"))


def test_resume_after_sigkill_gives_identical_output(tiny_checkpoint, tmp_path, caplog):
    path = write_jsonl(tmp_path / "p.jsonl", good_products(tmp_path / "images", n=8))
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    args = ["--shard-size", "1", "--batch-size", "1", "--skip-index"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "catalog.embed", *embed_args(tiny_checkpoint, path, killed, *args)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 1800  # a hang guard only, not a speed limit
    while not list((killed / "shards").glob("shard-*.parquet")) and time.monotonic() < deadline:
        assert process.poll() is None, "the embedding job ended before it could be killed"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(list((killed / "shards").glob("shard-*.parquet")))
    assert 0 < done_before < 8, f"kill landed after {done_before} of 8 shards"

    with caplog.at_level(logging.INFO, logger="catalog.embed"):
        main(embed_args(tiny_checkpoint, path, killed, *args))  # the rerun embeds only the missing shards
    assert f"{8 - done_before} of 8 shards to embed" in caplog.text
    main(embed_args(tiny_checkpoint, path, clean, *args))  # an uninterrupted run
    assert not list((killed / "shards").glob(".*.tmp"))
    assert sorted(p.name for p in (killed / "shards").iterdir()) == sorted(
        p.name for p in (clean / "shards").iterdir()
    )
    for shard in sorted((clean / "shards").iterdir()):
        assert (killed / "shards" / shard.name).read_bytes() == shard.read_bytes(), shard.name
    assert (killed / "rejects.jsonl").read_bytes() == (clean / "rejects.jsonl").read_bytes()


def test_threads_flag_sets_torch_threads_and_keeps_the_vectors(tiny_checkpoint, tmp_path):
    import torch

    path = write_jsonl(tmp_path / "p.jsonl", good_products(tmp_path / "images", n=4))
    before = torch.get_num_threads()
    try:
        main(embed_args(tiny_checkpoint, path, tmp_path / "one", "--skip-index", "--threads", "1"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    main(embed_args(tiny_checkpoint, path, tmp_path / "default", "--skip-index"))
    np.testing.assert_allclose(shard_vectors(tmp_path / "one")[1], shard_vectors(tmp_path / "default")[1], atol=1e-5)
    with pytest.raises(ValueError, match="--threads must be >= 1"):
        main(embed_args(tiny_checkpoint, path, tmp_path / "zero", "--skip-index", "--threads", "0"))
