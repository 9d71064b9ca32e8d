"""Catalogue search with MOON3: embed a product catalogue (locally or on Ray), store it in LanceDB, search it.

Modules, one concern each:
- records.py     read JSONL/Parquet products, sort rows into good products and rejects
- embedder.py    CatalogEmbedder: holds the model, embeds batches (shared by both engines)
- shards.py      the job folder: manifest, rejects file, atomically written vector shards
- embed.py       `python -m catalog.embed`: the job, with the local engine
- ray_engine.py  the Ray Data engine (map_batches over model-holding actors)
- store.py       the LanceDB table, its vector (IVF_PQ) and full-text (BM25) indexes
- fusion.py      weighted reciprocal rank fusion for hybrid search
- search.py      `python -m catalog.search` and CatalogSearch
- evaluate.py    `python -m catalog.evaluate`: nDCG@10 of these commands on a benchmark data folder
"""
