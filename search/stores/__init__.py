"""Vector stores: LanceDB embedded in a folder (the default) and PostgreSQL with pgvector (a real server).

``open_store(settings)`` picks one from the settings; both implement ``search.stores.base.VectorStore``. Each store's
driver is imported only by its own module, so a LanceDB user never needs psycopg and the reverse.
"""

from __future__ import annotations

import importlib.util

from search.settings import LanceStoreSettings, SearchSettings
from search.stores.base import VectorStore

DRIVERS = {"lancedb": ("lancedb",), "pgvector": ("psycopg", "pgvector")}  # what each store's module imports


def missing_driver(settings: SearchSettings) -> str | None:
    """The first package the settings' store needs that is not installed (the search extra's), or None; imports
    nothing, so a service can check before its first query opens the store."""
    return next((name for name in DRIVERS[settings.store.kind] if importlib.util.find_spec(name) is None), None)


def open_store(settings: SearchSettings) -> VectorStore:
    """The store the settings name, opened (created on first use); raises StoreError if it cannot be."""
    store = settings.store
    if isinstance(store, LanceStoreSettings):
        from search.stores.lance import LanceStore

        return LanceStore(store.path, store.table, ann_threshold_rows=settings.ann_threshold_rows)
    from search.stores.pgvector import PgvectorStore

    return PgvectorStore(store.dsn, store.table, ann_threshold_rows=settings.ann_threshold_rows)
