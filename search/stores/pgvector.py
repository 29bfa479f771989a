"""PostgreSQL with the pgvector extension: the store for a real database server.

Tables (``<t>`` is the configured name): ``<t>`` holds committed chunks with an ``embedding vector(d)`` column,
``<t>_staged`` the vectors of an unfinished run, ``<t>_meta`` the model binding (one row). A commit is one
transaction (delete the documents' chunks, COPY the new ones), so readers under PostgreSQL's snapshot isolation see a
document's old chunks or its new ones, never part of them.

Search follows pgvector's README: with no index PostgreSQL scans every row (exact); at ``ann_threshold_rows`` an HNSW
index on ``vector_cosine_ops`` is built, queried with ``hnsw.ef_search`` candidates, and with
``hnsw.iterative_scan = strict_order`` so a filter by source still returns k rows; ``exact=True`` turns index scans off
for the query (``SET LOCAL enable_indexscan = off``), the README's way to get exact results with an index present.
HNSW is maintained on insert: nothing to rebuild after later runs.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from search.errors import StoreError
from search.stores.base import DocumentUpdate, Hit, ModelBinding, StoreSummary, check_binding, chunk_id

logger = logging.getLogger(__name__)

EF_SEARCH = 100  # HNSW candidates per query (pgvector's default is 40); recall measured in docs/search.md
_POOL_SIZE = 8


def _array(value: object) -> np.ndarray:
    """pgvector's ``Vector`` (what its loader returns) or a sequence, as float32."""
    to_numpy = getattr(value, "to_numpy", None)
    return np.asarray(to_numpy() if to_numpy else value, dtype=np.float32)


class PgvectorStore:
    kind = "pgvector"

    def __init__(self, dsn: str, table: str = "search_chunks", ann_threshold_rows: int = 20_000) -> None:
        self.dsn = dsn
        self.ann_threshold_rows = ann_threshold_rows
        self._t = sql.Identifier(table)
        self._staged = sql.Identifier(f"{table}_staged")
        self._meta = sql.Identifier(f"{table}_meta")
        self._index = sql.Identifier(f"{table}_hnsw")
        self._table_name = table
        self._idle: queue.SimpleQueue[psycopg.Connection] = queue.SimpleQueue()
        with self._connection() as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} (model text NOT NULL, dimensions int NOT NULL)").format(
                    self._meta
                )
            )

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A connection of a small pool (the HTTP app searches from several threads at once)."""
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            try:
                conn = psycopg.connect(self.dsn, autocommit=True)
            except psycopg.Error as error:
                raise StoreError(f"cannot connect to PostgreSQL: {error}") from None
            try:
                register_vector(conn)
            except psycopg.ProgrammingError:  # the extension is created by __init__'s first connection
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                register_vector(conn)
        try:
            yield conn
        except psycopg.Error as error:
            conn.close()
            raise StoreError(f"PostgreSQL: {error}") from None
        if not conn.closed and self._idle.qsize() < _POOL_SIZE:
            self._idle.put(conn)
        else:
            conn.close()

    # -- model binding -------------------------------------------------------------------------------------------
    def binding(self) -> ModelBinding | None:
        with self._connection() as conn:
            row = conn.execute(sql.SQL("SELECT model, dimensions FROM {} LIMIT 1").format(self._meta)).fetchone()
        return ModelBinding(row[0], int(row[1])) if row else None

    def bind(self, binding: ModelBinding) -> None:
        stored = self.binding()
        if stored is not None:
            check_binding(stored, binding.model, binding.dimensions)
            return
        dims = sql.Literal(binding.dimensions)
        with self._connection() as conn, conn.transaction():
            conn.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(self._meta))
            if conn.execute(sql.SQL("SELECT 1 FROM {}").format(self._meta)).fetchone():
                return  # another indexer bound it first; the next call checks it
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY, doc_id text NOT NULL, source text NOT NULL, "
                    "doc_hash text NOT NULL, ordinal int NOT NULL, text text NOT NULL, hash text NOT NULL, "
                    "embedding vector({}) NOT NULL)"
                ).format(self._t, dims)
            )
            conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (doc_id)").format(
                    sql.Identifier(f"{self._table_name}_doc"), self._t
                )
            )
            conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (source)").format(
                    sql.Identifier(f"{self._table_name}_source"), self._t
                )
            )
            conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} (hash text PRIMARY KEY, embedding vector({}) NOT NULL)").format(
                    self._staged, dims
                )
            )
            conn.execute(
                sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(self._meta), (binding.model, binding.dimensions)
            )

    def _bound(self) -> bool:
        return self.binding() is not None

    # -- indexing ------------------------------------------------------------------------------------------------
    def document_hashes(self) -> dict[str, str]:
        if not self._bound():
            return {}
        with self._connection() as conn:
            rows = conn.execute(sql.SQL("SELECT doc_id, doc_hash FROM {} WHERE ordinal = 0").format(self._t)).fetchall()
        return dict(rows)

    def vectors_of(self, doc_ids: Sequence[str]) -> dict[str, np.ndarray]:
        if not doc_ids or not self._bound():
            return {}
        with self._connection() as conn:
            rows = conn.execute(
                sql.SQL("SELECT hash, embedding FROM {} WHERE doc_id = ANY(%s)").format(self._t), (list(doc_ids),)
            ).fetchall()
        return {h: _array(v) for h, v in rows}

    def staged_vectors(self) -> dict[str, np.ndarray]:
        if not self._bound():
            return {}
        with self._connection() as conn:
            rows = conn.execute(sql.SQL("SELECT hash, embedding FROM {}").format(self._staged)).fetchall()
        return {h: _array(v) for h, v in rows}

    def stage(self, vectors: dict[str, np.ndarray]) -> None:
        if not vectors:
            return
        # ON CONFLICT: a vector staged by an earlier, interrupted run may be staged again; either copy is the same.
        statement = sql.SQL("INSERT INTO {} (hash, embedding) VALUES (%s, %s) ON CONFLICT (hash) DO NOTHING")
        with self._connection() as conn, conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(statement.format(self._staged), list(vectors.items()))

    def clear_staged(self) -> None:
        if self._bound():
            with self._connection() as conn:
                conn.execute(sql.SQL("TRUNCATE {}").format(self._staged))

    def commit(self, updates: Sequence[DocumentUpdate]) -> None:
        if not updates:
            return
        columns = sql.SQL("COPY {} (id, doc_id, source, doc_hash, ordinal, text, hash, embedding) FROM STDIN")
        with self._connection() as conn, conn.transaction():
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE doc_id = ANY(%s)").format(self._t), ([u.doc_id for u in updates],)
            )
            with conn.cursor().copy(columns.format(self._t)) as copy:
                for update in updates:
                    for c in update.chunks:
                        row = (chunk_id(update.doc_id, c.ordinal), update.doc_id, update.source, update.doc_hash)
                        copy.write_row((*row, c.ordinal, c.text, c.hash, c.vector))

    def _has_index(self, conn: psycopg.Connection) -> bool:
        found = conn.execute("SELECT 1 FROM pg_indexes WHERE indexname = %s", (f"{self._table_name}_hnsw",))
        return found.fetchone() is not None

    def ensure_index(self) -> str:
        if not self._bound():
            return "exact"
        with self._connection() as conn:
            if self._has_index(conn):
                return "hnsw"
            rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self._t)).fetchone()[0]
            if rows < self.ann_threshold_rows:
                return "exact"
            logger.info("building an HNSW index over %d rows", rows)
            conn.execute("SET maintenance_work_mem = '512MB'")  # pgvector: builds far faster when the graph fits
            conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw (embedding vector_cosine_ops)").format(
                    self._index, self._t
                )
            )
            conn.execute(sql.SQL("ANALYZE {}").format(self._t))
        return "hnsw"

    # -- querying ------------------------------------------------------------------------------------------------
    def search(
        self, vector: np.ndarray, k: int, sources: Sequence[str] | None = None, exact: bool = False
    ) -> list[Hit]:
        if not self._bound():
            return []
        query = np.asarray(vector, dtype=np.float32)
        where = sql.SQL("WHERE source = ANY(%(sources)s)") if sources else sql.SQL("")
        statement = sql.SQL(
            "SELECT id, doc_id, source, ordinal, text, embedding <=> %(q)s AS distance FROM {} {} "
            "ORDER BY embedding <=> %(q)s LIMIT %(k)s"
        ).format(self._t, where)
        with self._connection() as conn, conn.transaction():
            if exact:
                conn.execute("SET LOCAL enable_indexscan = off")
            else:
                conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(max(EF_SEARCH, k))))
                conn.execute("SET LOCAL hnsw.iterative_scan = strict_order")
            rows = conn.execute(statement, {"q": query, "k": k, "sources": list(sources or [])}).fetchall()
        return [Hit(r[0], r[1], r[2], int(r[3]), r[4], 1.0 - float(r[5])) for r in rows]

    def summary(self) -> StoreSummary:
        binding = self.binding()
        documents = chunks = staged = 0
        search = "exact"
        if binding is not None:
            with self._connection() as conn:
                chunks, documents = conn.execute(
                    sql.SQL("SELECT count(*), count(*) FILTER (WHERE ordinal = 0) FROM {}").format(self._t)
                ).fetchone()
                staged = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self._staged)).fetchone()[0]
                search = "hnsw" if self._has_index(conn) else "exact"
        return StoreSummary(
            kind=self.kind,
            location=self.dsn.split("@")[-1],  # never show a password
            documents=int(documents),
            chunks=int(chunks),
            model=binding.model if binding else None,
            dimensions=binding.dimensions if binding else None,
            search=search,
            staged=int(staged),
        )

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return
