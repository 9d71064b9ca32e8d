"""The Ray Data engine: the same CatalogEmbedder, held by a pool of actors, over the pending shards.

Ray Data's batch-inference pattern: `ds.map_batches(CatalogEmbedder, concurrency=N, ...)` starts N actors, each
builds one CatalogEmbedder (loads the model once) and then embeds the batches it is given. The driver streams the
results back in input order (`preserve_order`), collects them per shard and writes each shard atomically as soon as
it is complete, exactly as the local engine does, so a killed Ray job resumes the same way and the shards hold the
same vectors (batch composition does not change MOON3's vectors: it pads on the left under an attention mask).

On a cluster: `ray start --head` on one machine, `ray start --address ...` on the others, then run
`python -m catalog.embed ... --engine ray --ray-address auto --workers 8 --gpus-per-worker 1` on the head (this
multi-node recipe has not been run here; the engine is tested on a local instance with 2 CPU workers). Every node
needs the checkpoint at the same path (or a Hub id) and the product images at the paths the input lists.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


def import_ray():
    """`ray` with Ray Data, or an ImportError that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "--engine ray needs Ray Data, which is not installed: pip install 'ray[data]' (or use --engine local)."
        ) from e
    return ray


def ensure_ray(ray, address: str | None, num_cpus: float) -> None:
    """Connect to `address`, or start a local instance with `num_cpus` CPUs, unless Ray is already up."""
    if ray.is_initialized():
        return
    # actors import catalog/ and the model's remote code: make the repo importable in every worker
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    for name in ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", "HF_HOME"):
        if name in os.environ:
            env[name] = os.environ[name]
    if address:
        ray.init(address=address, runtime_env={"env_vars": env})
    else:
        ray.init(num_cpus=max(1, int(np.ceil(num_cpus))), runtime_env={"env_vars": env}, include_dashboard=False)


def run_ray(args, products: list[dict], pending: list[int], out: Path) -> None:
    """Embed the `pending` shards of `products` on Ray Data actors and write each shard as it completes."""
    from tqdm.auto import tqdm

    from .embedder import CatalogEmbedder
    from .shards import shard_products

    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}.")
    ray = import_ray()
    ensure_ray(ray, args.ray_address, args.workers * args.cpus_per_worker)
    rows, expected = [], {}
    for shard in pending:
        start = shard * args.shard_size
        shard_rows = shard_products(products, shard, args.shard_size)
        expected[shard] = len(shard_rows)
        rows += [{"position": start + i, "record": json.dumps(p)} for i, p in enumerate(shard_rows)]
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    dataset = ray.data.from_items(rows).map_batches(
        CatalogEmbedder,
        fn_constructor_kwargs={
            "model_path": args.model,
            "mode": args.mode,
            "batch_size": args.batch_size,
            "truncate_dim": args.truncate_dim,
            "torch_threads": max(1, int(args.cpus_per_worker)),
        },
        batch_size=args.batch_size,
        batch_format="numpy",
        concurrency=args.workers,
        num_cpus=args.cpus_per_worker,
        num_gpus=args.gpus_per_worker or None,
    )
    collected: dict[int, list[tuple[int, np.ndarray, str | None]]] = {k: [] for k in pending}
    with tqdm(total=len(rows), desc="embedding products (ray)", unit="product", disable=args.no_progress) as bar:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for position, vector, reasoning in zip(batch["position"], batch["vector"], batch["reasoning"]):
                shard = int(position) // args.shard_size
                collected[shard].append((int(position), vector, reasoning))
                if len(collected[shard]) == expected[shard]:
                    _write_collected(out, shard, products, args.shard_size, collected.pop(shard))
            bar.update(len(batch["position"]))
    if collected:
        raise RuntimeError(f"Ray returned incomplete shards {sorted(collected)}; rerun the same command to resume.")


def _write_collected(out, shard, products, shard_size, items) -> None:
    from .shards import shard_products, write_shard

    items.sort(key=lambda item: item[0])
    vectors = np.stack([np.asarray(v, dtype=np.float32) for _, v, _ in items])  # (B, E)
    reasoning = [None if r is None or (isinstance(r, float) and np.isnan(r)) else str(r) for _, _, r in items]
    write_shard(out, shard, shard_products(products, shard, shard_size), vectors, reasoning)
