"""LanceDB embedded in a folder: the default store, no server.

Layout: ``<folder>/<table>.lance`` (committed chunks), ``<folder>/<table>_staged.lance`` (vectors of an unfinished
run) and ``<folder>/search_store.json`` (the model binding, written atomically by rename). A commit is one
``merge_insert`` on the chunk id that also deletes the documents' vanished chunks
(``when_not_matched_by_source_delete``): one table version, so readers see all of it or none of it. Readers open
with ``read_consistency_interval=0`` to see commits of other processes (the UI or HTTP app while ``index`` runs).

Search is a flat (exact) scan below ``ann_threshold_rows`` and an IVF_PQ index at and above it, as LanceDB documents
it: cosine distance, ``nprobes`` partitions searched, ``refine_factor`` re-ranking of PQ candidates with the full
vectors; rows added after the index was built are scanned exactly and merged by LanceDB, and ``optimize()`` folds
them into the index at the end of each index run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import IvfPq

from search.errors import ModelMismatch, StoreError
from search.stores.base import (
    ChunkRecord,
    DocumentUpdate,
    Hit,
    ModelBinding,
    StoreSummary,
    check_binding,
    chunk_id,
    sql_string,
)

logger = logging.getLogger(__name__)

META_FILE = "search_store.json"
NPROBES = 32  # of about sqrt(rows) partitions; measured in docs/search.md (recall@10 against exact)
REFINE_FACTOR = 10  # PQ candidates re-scored with the full vectors: k * 10
# The filter of one commit lists its documents; keep that SQL string bounded.
_MAX_DOCS_PER_MERGE = 1000


def _vectors(vectors: Sequence[np.ndarray], dimensions: int) -> pa.FixedSizeListArray:
    flat = np.ascontiguousarray(np.vstack(vectors), dtype=np.float32).reshape(-1) if vectors else np.zeros(0, "f4")
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), dimensions)


def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    """A fixed-size-list column as an (n, d) float32 matrix, without a Python object per row."""
    merged = column.combine_chunks()
    return merged.flatten().to_numpy(zero_copy_only=False).reshape(len(merged), merged.type.list_size)


class LanceStore:
    kind = "lancedb"

    def __init__(self, path: str | os.PathLike[str], table: str = "chunks", ann_threshold_rows: int = 20_000) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._db = lancedb.connect(str(self.path), read_consistency_interval=timedelta(0))
        except (OSError, ValueError) as error:
            raise StoreError(f"cannot open the LanceDB store at {self.path}: {error}") from None
        self._table_name = table
        self._staged_name = f"{table}_staged"
        self.ann_threshold_rows = ann_threshold_rows

    # -- model binding -------------------------------------------------------------------------------------------
    def binding(self) -> ModelBinding | None:
        meta = self.path / META_FILE
        if not meta.exists():
            return None
        data = json.loads(meta.read_text())
        return ModelBinding(str(data["model"]), int(data["dimensions"]))

    def bind(self, binding: ModelBinding) -> None:
        stored = self.binding()
        if stored is not None:
            check_binding(stored, binding.model, binding.dimensions)
            return
        if self._table(self._table_name) is not None:
            raise ModelMismatch(f"{self.path}: chunks without a recorded model ({META_FILE} is missing)")
        scratch = self.path / f".{META_FILE}.tmp"
        scratch.write_text(json.dumps({"model": binding.model, "dimensions": binding.dimensions}))
        os.replace(scratch, self.path / META_FILE)

    # -- tables --------------------------------------------------------------------------------------------------
    def _table(self, name: str) -> lancedb.table.Table | None:
        return self._db.open_table(name) if name in self._names() else None

    def _names(self) -> set[str]:
        return set(self._db.list_tables().tables)

    def _schema(self, dimensions: int) -> pa.Schema:
        return pa.schema(
            [
                ("id", pa.string()),
                ("doc_id", pa.string()),
                ("source", pa.string()),
                ("doc_hash", pa.string()),
                ("ordinal", pa.int32()),
                ("text", pa.string()),
                ("hash", pa.string()),
                ("vector", pa.list_(pa.float32(), dimensions)),
            ]
        )

    def _dimensions(self) -> int:
        binding = self.binding()
        if binding is None:
            raise StoreError("the store has no model binding yet (bind before writing)")
        return binding.dimensions

    # -- indexing ------------------------------------------------------------------------------------------------
    def document_hashes(self) -> dict[str, str]:
        table = self._table(self._table_name)
        if table is None:
            return {}
        rows = table.search().select(["doc_id", "doc_hash"]).where("ordinal = 0").limit(None).to_arrow()
        return dict(zip(rows["doc_id"].to_pylist(), rows["doc_hash"].to_pylist(), strict=True))

    def vectors_of(self, doc_ids: Sequence[str]) -> dict[str, np.ndarray]:
        table = self._table(self._table_name)
        found: dict[str, np.ndarray] = {}
        if table is None or not doc_ids:
            return found
        for start in range(0, len(doc_ids), _MAX_DOCS_PER_MERGE):
            part = doc_ids[start : start + _MAX_DOCS_PER_MERGE]
            where = f"doc_id IN ({', '.join(sql_string(d) for d in part)})"
            rows = table.search().select(["hash", "vector"]).where(where).limit(None).to_arrow()
            found.update(zip(rows["hash"].to_pylist(), _matrix(rows["vector"]), strict=True))
        return found

    def staged_vectors(self) -> dict[str, np.ndarray]:
        table = self._table(self._staged_name)
        if table is None:
            return {}
        rows = table.to_arrow()
        if rows.num_rows == 0:
            return {}
        return dict(zip(rows["hash"].to_pylist(), _matrix(rows["vector"]), strict=True))

    def stage(self, vectors: dict[str, np.ndarray]) -> None:
        if not vectors:
            return
        dimensions = self._dimensions()
        data = pa.table(
            {"hash": list(vectors), "vector": _vectors(list(vectors.values()), dimensions)},
            schema=pa.schema([("hash", pa.string()), ("vector", pa.list_(pa.float32(), dimensions))]),
        )
        table = self._table(self._staged_name)
        if table is None:
            self._db.create_table(self._staged_name, data=data)
        else:  # a vector staged by an earlier, interrupted run may come again: keep one row per hash
            table.merge_insert("hash").when_not_matched_insert_all().execute(data)

    def clear_staged(self) -> None:
        if self._staged_name in self._names():
            self._db.drop_table(self._staged_name)

    def commit(self, updates: Sequence[DocumentUpdate]) -> None:
        if not updates:
            return
        dimensions = self._dimensions()
        schema = self._schema(dimensions)
        table = self._table(self._table_name)
        if table is None:
            table = self._db.create_table(self._table_name, schema=schema)
        for start in range(0, len(updates), _MAX_DOCS_PER_MERGE):
            part = updates[start : start + _MAX_DOCS_PER_MERGE]
            records: list[tuple[DocumentUpdate, ChunkRecord]] = [(u, c) for u in part for c in u.chunks]
            where = f"doc_id IN ({', '.join(sql_string(u.doc_id) for u in part)})"
            if not records:
                table.delete(where)
                continue
            data = pa.table(
                {
                    "id": [chunk_id(u.doc_id, c.ordinal) for u, c in records],
                    "doc_id": [u.doc_id for u, _ in records],
                    "source": [u.source for u, _ in records],
                    "doc_hash": [u.doc_hash for u, _ in records],
                    "ordinal": pa.array([c.ordinal for _, c in records], pa.int32()),
                    "text": [c.text for _, c in records],
                    "hash": [c.hash for _, c in records],
                    "vector": _vectors([c.vector for _, c in records], dimensions),
                },
                schema=schema,
            )
            (
                table.merge_insert("id")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .when_not_matched_by_source_delete(where)
                .execute(data)
            )

    def _ann_index(self, table: lancedb.table.Table) -> str | None:
        for index in table.list_indices():
            if "vector" in index.columns:
                return str(index.index_type)
        return None

    def ensure_index(self) -> str:
        table = self._table(self._table_name)
        if table is None:
            return "exact"
        rows = table.count_rows()
        existing = self._ann_index(table)
        if existing is None and rows >= self.ann_threshold_rows:
            dimensions = self._dimensions()
            # 8 dimensions per PQ sub-vector when they divide evenly (LanceDB's advice for recall); else its default.
            sub_vectors = dimensions // 8 if dimensions % 8 == 0 else None
            logger.info("building an IVF_PQ index over %d rows", rows)
            config = IvfPq(distance_type="cosine", num_partitions=max(1, int(rows**0.5)), num_sub_vectors=sub_vectors)
            table.create_index("vector", config=config)  # the unified API: column first
            return self._ann_index(table) or "exact"
        if existing is not None:
            table.optimize()  # folds rows added since into the index and compacts small fragments
            return existing
        return "exact"

    # -- querying ------------------------------------------------------------------------------------------------
    def search(
        self, vector: np.ndarray, k: int, sources: Sequence[str] | None = None, exact: bool = False
    ) -> list[Hit]:
        table = self._table(self._table_name)
        if table is None:
            return []
        query = table.search(np.asarray(vector, dtype=np.float32)).distance_type("cosine").limit(k)
        query = query.select(["id", "doc_id", "source", "ordinal", "text", "_distance"])
        if sources:
            query = query.where(f"source IN ({', '.join(sql_string(s) for s in sources)})", prefilter=True)
        if exact or self._ann_index(table) is None:
            query = query.bypass_vector_index()
        else:
            query = query.nprobes(NPROBES).refine_factor(REFINE_FACTOR)
        rows = query.to_arrow().to_pylist()
        return [
            Hit(r["id"], r["doc_id"], r["source"], int(r["ordinal"]), r["text"], 1.0 - float(r["_distance"]))
            for r in rows
        ]

    def summary(self) -> StoreSummary:
        binding = self.binding()
        table = self._table(self._table_name)
        staged = self._table(self._staged_name)
        chunks = table.count_rows() if table is not None else 0
        documents = table.count_rows("ordinal = 0") if table is not None else 0
        index = self._ann_index(table) if table is not None else None
        return StoreSummary(
            kind=self.kind,
            location=str(self.path),
            documents=documents,
            chunks=chunks,
            model=binding.model if binding else None,
            dimensions=binding.dimensions if binding else None,
            search=index or "exact",
            staged=staged.count_rows() if staged is not None else 0,
        )

    def close(self) -> None:
        """Nothing to release: LanceDB holds no connection."""
