"""--engine ray on a local Ray instance with 2 CPU workers: the local engine's vectors and rejects."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from catalog_data import embed_args
from test_embed import shard_vectors

from catalog.embed import main


def test_ray_engine_matches_local_engine(catalogue, tiny_checkpoint, tmp_path):
    ray = pytest.importorskip("ray")
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    common = ["--shard-size", "3", "--batch-size", "2", "--skip-index"]
    main(embed_args(tiny_checkpoint, catalogue, local, *common))
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        main(embed_args(tiny_checkpoint, catalogue, on_ray, *common, "--engine", "ray", "--workers", "2"))
    finally:
        ray.shutdown()
    local_ids, local_vectors = shard_vectors(local)
    ray_ids, ray_vectors = shard_vectors(on_ray)
    assert ray_ids == local_ids
    np.testing.assert_allclose(ray_vectors, local_vectors, atol=1e-5, rtol=0)
    assert (on_ray / "rejects.jsonl").read_text() == (local / "rejects.jsonl").read_text()
    assert sorted(p.name for p in (on_ray / "shards").iterdir()) == sorted(
        p.name for p in (local / "shards").iterdir()
    )


def test_ray_engine_without_ray_says_how_to_install(catalogue, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'ray\[data\]'"):
        main(embed_args(tiny_checkpoint, catalogue, tmp_path / "out", "--engine", "ray", "--skip-index"))
