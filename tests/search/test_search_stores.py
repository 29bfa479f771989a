"""Both stores against the same contract: atomic replacement of documents, staging, the model binding, exact search
below the threshold and the ANN index above it (LanceDB in a temp folder, pgvector on a real PostgreSQL)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from search.errors import EmptyStore, ModelMismatch
from search.stores.base import ChunkRecord, DocumentUpdate, ModelBinding, VectorStore, check_binding
from tests.search.postgres import postgres_dsn  # noqa: F401  (a fixture)

DIMS = 16
_tables = itertools.count()


@pytest.fixture(params=["lancedb", "pgvector"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    opened: list[VectorStore] = []

    def make(threshold: int = 1000) -> VectorStore:
        if request.param == "lancedb":
            from search.stores.lance import LanceStore

            store: VectorStore = LanceStore(tmp_path / f"store{len(opened)}", ann_threshold_rows=threshold)
        else:
            from search.stores.pgvector import PgvectorStore

            dsn = request.getfixturevalue("postgres_dsn")
            store = PgvectorStore(dsn, f"t{next(_tables)}", ann_threshold_rows=threshold)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIMS)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _doc(doc_id: str, vectors: np.ndarray, source: str = "a.txt", tag: str = "") -> DocumentUpdate:
    chunks = [ChunkRecord(n, f"{doc_id} chunk {n}{tag}", f"{doc_id}-{n}{tag}", v) for n, v in enumerate(vectors)]
    return DocumentUpdate(doc_id, source, f"hash-{doc_id}{tag}", chunks)


def test_commit_replaces_whole_documents(make_store) -> None:
    store = make_store()
    rng = np.random.default_rng(0)
    assert store.binding() is None and store.summary().chunks == 0
    store.bind(ModelBinding("m", DIMS))
    store.commit([_doc("d1", _unit(rng, 3)), _doc("d2", _unit(rng, 2), source="b.txt")])
    assert store.document_hashes() == {"d1": "hash-d1", "d2": "hash-d2"}
    summary = store.summary()
    assert (summary.documents, summary.chunks, summary.model, summary.dimensions) == (2, 5, "m", DIMS)

    shorter = _unit(rng, 1)
    store.commit([_doc("d1", shorter, tag="v2")])  # d1 shrinks to one chunk: its old chunks 1, 2 are gone
    assert store.summary().chunks == 3
    hits = store.search(shorter[0], 10)
    assert hits[0].id == "d1:0" and hits[0].text == "d1 chunk 0v2" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert {h.id for h in hits} == {"d1:0", "d2:0", "d2:1"}
    assert set(store.vectors_of(["d1"])) == {"d1-0v2"}
    np.testing.assert_allclose(store.vectors_of(["d1"])["d1-0v2"], shorter[0], atol=1e-6)
    assert [h.source for h in store.search(shorter[0], 10, sources=["b.txt"])] == ["b.txt", "b.txt"]

    store.stage({"x": shorter[0], "y": shorter[0]})
    store.stage({"x": shorter[0]})  # staging again (a resumed run) is harmless
    assert set(store.staged_vectors()) == {"x", "y"} and store.summary().staged == 2
    assert all(h.id != "x" for h in store.search(shorter[0], 10))  # queries never read staged vectors
    store.clear_staged()
    assert store.staged_vectors() == {}


def test_the_store_keeps_its_model(make_store) -> None:
    store = make_store()
    with pytest.raises(EmptyStore):
        check_binding(store.binding(), "m", DIMS)
    store.bind(ModelBinding("all-MiniLM-L6-v2", DIMS))
    store.bind(ModelBinding("ALL-MiniLM-L6-v2", DIMS))  # the same model, as another client spells it
    with pytest.raises(ModelMismatch, match="all-MiniLM-L6-v2 .16 dimensions."):
        store.bind(ModelBinding("Qwen3-Embedding-0.6B", 1024))
    with pytest.raises(ModelMismatch):
        check_binding(store.binding(), "all-MiniLM-L6-v2", 8)


def test_exact_below_the_threshold_ann_above_it(make_store) -> None:
    store = make_store(threshold=600)
    rng = np.random.default_rng(1)
    store.bind(ModelBinding("m", DIMS))
    # Clustered vectors, as real embeddings are: random ones in 16 dimensions have no near neighbours to find.
    centres = _unit(rng, 20)
    data = centres[rng.integers(0, 20, 700)] + 0.15 * rng.standard_normal((700, DIMS)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    store.commit([_doc(f"d{n}", data[n * 10 : n * 10 + 10]) for n in range(50)])
    assert store.ensure_index() == "exact"  # 500 rows: below the threshold
    store.commit([_doc(f"d{n}", data[n * 10 : n * 10 + 10]) for n in range(50, 70)])
    search = store.ensure_index()
    assert search != "exact" and store.summary().search == search
    queries = _unit(rng, 20)
    recall = []
    for q in queries:
        exact = [h.id for h in store.search(q, 10, exact=True)]
        approx = [h.id for h in store.search(q, 10)]
        recall.append(len(set(exact) & set(approx)) / 10)
        brute = np.argsort(-(data @ q))[:10]
        assert exact == [f"d{i // 10}:{i % 10}" for i in brute]  # exact really is exact
    assert np.mean(recall) >= 0.9, recall
