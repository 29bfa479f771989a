"""What every vector store offers the indexer and the query path, and the checks they share.

The contract that keeps a store consistent under interruption:

- ``commit(updates)`` replaces the chunks of whole documents in one atomic step (a LanceDB merge-insert is one
  table version; PostgreSQL one transaction): a query sees a document's old chunks or its new ones, never a mix and
  never a chunk without its vector.
- ``stage(vectors)`` keeps vectors already embedded but not yet committed (keyed by content hash) in a side table that
  queries never read, so a run killed mid-way resumes without embedding them again; ``clear_staged`` empties it once
  a run has committed everything.
- the store records the model name and dimensions it was built with (``bind``) and refuses another (``ModelMismatch``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from search.errors import EmptyStore, ModelMismatch


@dataclass(frozen=True)
class ModelBinding:
    model: str
    dimensions: int


@dataclass(frozen=True)
class ChunkRecord:
    ordinal: int
    text: str
    hash: str
    vector: np.ndarray


@dataclass(frozen=True)
class DocumentUpdate:
    doc_id: str
    source: str
    doc_hash: str
    chunks: Sequence[ChunkRecord]


@dataclass(frozen=True)
class Hit:
    id: str
    doc_id: str
    source: str
    ordinal: int
    text: str
    score: float  # cosine similarity (1 - cosine distance); the reranker's relevance after --rerank


@dataclass(frozen=True)
class StoreSummary:
    kind: str
    location: str
    documents: int
    chunks: int
    model: str | None
    dimensions: int | None
    search: str  # "exact" or the ANN index in use
    staged: int  # vectors of an unfinished run


def chunk_id(doc_id: str, ordinal: int) -> str:
    return f"{doc_id}:{ordinal}"


def check_binding(stored: ModelBinding | None, model: str, dimensions: int) -> ModelBinding:
    """The store's binding if ``model``/``dimensions`` match it; raises ModelMismatch or EmptyStore."""
    if stored is None:
        raise EmptyStore("the store is empty: index some files first (search index PATHS...)")
    if stored.model.lower() != model.lower() or stored.dimensions != dimensions:
        raise ModelMismatch(
            f"the store was built with {stored.model} ({stored.dimensions} dimensions) but the query was embedded by "
            f"{model} ({dimensions} dimensions): point --url at a service of {stored.model}, "
            "or index into another store"
        )
    return stored


def sql_string(value: str) -> str:
    """A SQL string literal (LanceDB filters are SQL: quotes are doubled)."""
    return "'" + value.replace("'", "''") + "'"


class VectorStore(Protocol):
    kind: str

    def binding(self) -> ModelBinding | None: ...

    def bind(self, binding: ModelBinding) -> None:
        """Record the model on first use; raises ModelMismatch when the store holds another."""

    def document_hashes(self) -> dict[str, str]:
        """doc_id -> content hash of the whole document, for every committed document."""

    def vectors_of(self, doc_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """chunk content hash -> vector, for the committed chunks of these documents."""

    def staged_vectors(self) -> dict[str, np.ndarray]: ...

    def stage(self, vectors: dict[str, np.ndarray]) -> None: ...

    def commit(self, updates: Sequence[DocumentUpdate]) -> None: ...

    def clear_staged(self) -> None: ...

    def ensure_index(self) -> str:
        """Build (or bring up to date) the ANN index once the store holds enough rows; returns the search in use."""

    def search(
        self, vector: np.ndarray, k: int, sources: Sequence[str] | None = None, exact: bool = False
    ) -> list[Hit]:
        """The k chunks closest to ``vector`` by cosine, best first; ``exact`` bypasses any ANN index."""

    def summary(self) -> StoreSummary: ...

    def close(self) -> None: ...
