"""Bulk indexing jobs: read catalogs, validate rows, encode in batches, upsert.

``python -m indexers CATALOG --data-dir DIR`` is the same job as ``mmrec index``.
"""
