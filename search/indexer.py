"""Index files into a store: read, chunk, embed what is new, commit whole documents atomically.

The run, in order: ask the service what it serves (``/info``, ``/instances``) -> bind the store to that model (a store
of another model refuses) -> skip documents whose content hash is unchanged -> chunk the others with the model's
tokenizer -> take vectors of unchanged chunks from the store (the document's old rows, or the staged vectors of an
interrupted run) -> embed only the rest, ``in_flight`` requests at a time so every instance always has work queued ->
commit documents whose chunks all have vectors, in groups, each group one atomic store write.

Documents are embedded without any prompt (instruction); queries get the model's ``query`` prompt (``search.query``).
Every ``stage_interval_s`` the vectors that unfinished documents wait on are staged, so a killed run loses at most
that much work and the next run resumes; the staged vectors are dropped once a run completes. Tokenising and store
writes run in threads so the requests in flight never wait for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search.chunking import Chunker, content_hash
from search.embedding_client import EmbeddingClient, ServiceFacts
from search.errors import ServiceError, SettingsError
from search.readers import Document, expand_paths, read_documents
from search.settings import SearchSettings
from search.stores.base import ChunkRecord, DocumentUpdate, ModelBinding, VectorStore

logger = logging.getLogger(__name__)

# (chunks with a vector, chunks known so far, every document read) -> None; called in the event loop's thread.
Progress = Callable[[int, int, bool], None]
_DOCS_PER_TOKENIZE = 256  # documents tokenised per thread hop (one encode_batch call)
_SPECIAL_TOKENS = 2  # [CLS]/[SEP] or <s>/</s> the service adds around each chunk
_STOP = ("", "")
# Vectors of this run kept by content hash, so a chunk text seen again (boilerplate, repeated sentences) is not
# embedded twice; bounded so a huge run does not keep every vector in memory (about 1.5 KB each at 384 dimensions).
_RUN_VECTORS_KEPT = 200_000


@dataclass
class IndexReport:
    files: int = 0
    documents: int = 0
    unchanged_documents: int = 0
    chunks: int = 0  # chunks of the changed documents
    embedded_chunks: int = 0  # sent to the service in this run
    reused_chunks: int = 0  # vectors taken from the store or from an interrupted run's staged vectors
    requests: int = 0
    embed_s: float = 0.0  # from the first request sent to the last answer received
    elapsed_s: float = 0.0
    search: str = "exact"

    @property
    def chunks_per_s(self) -> float:
        return self.embedded_chunks / self.embed_s if self.embed_s > 0 else 0.0


class _Pending:
    """A changed document whose chunks are waiting for vectors."""

    def __init__(self, document: Document, doc_hash: str, texts: list[str], hashes: list[str]) -> None:
        self.document, self.doc_hash, self.texts, self.hashes = document, doc_hash, texts, hashes
        self.vectors: list[np.ndarray | None] = [None] * len(texts)
        self.missing = len(texts)

    def give(self, key: str, vector: np.ndarray) -> int:
        filled = 0
        for n, hash_ in enumerate(self.hashes):
            if hash_ == key and self.vectors[n] is None:
                self.vectors[n] = vector
                filled += 1
        self.missing -= filled
        return filled

    def update(self) -> DocumentUpdate:
        rows = zip(self.texts, self.hashes, self.vectors, strict=True)
        chunks = [ChunkRecord(n, text, key, vector) for n, (text, key, vector) in enumerate(rows)]
        return DocumentUpdate(self.document.doc_id, self.document.source, self.doc_hash, chunks)


async def bind_store(store: VectorStore, client: EmbeddingClient, facts: ServiceFacts) -> ModelBinding:
    """The (model, dimensions) of the service, recorded in the store or checked against it (ModelMismatch)."""
    model, dimensions = facts.model, facts.dimensions
    if model is None or dimensions is None:  # a plain OpenAI endpoint: learn both from one answer
        probe = await client.embed(["dimension probe"])
        model, dimensions = model or probe.model, dimensions or int(probe.vectors.shape[1])
    if not model:
        raise ServiceError("the embedding service names no model: set model: in the settings")
    binding = ModelBinding(model, int(dimensions))
    await asyncio.to_thread(store.bind, binding)
    return binding


def document_hash(document: Document, chunker: Chunker) -> str:
    # The chunking parameters are part of a document's identity: changing them re-chunks every document.
    return content_hash(f"{chunker.size}/{chunker.overlap}\0{document.text}")


class _Run:
    def __init__(self, settings: SearchSettings, store: VectorStore, client: EmbeddingClient, chunker: Chunker) -> None:
        self.settings, self.store, self.client, self.chunker = settings, store, client, chunker
        self.report = IndexReport()
        self.progress: Progress | None = None
        self.committed: dict[str, str] = {}
        self.staged: dict[str, np.ndarray] = {}
        self.waiting: dict[str, list[_Pending]] = {}  # content hash -> documents waiting for its vector
        self.unfinished: dict[int, _Pending] = {}
        self.ready: list[_Pending] = []
        self.fresh: dict[str, np.ndarray] = {}  # embedded since the last flush
        self.seen: dict[str, np.ndarray] = {}  # embedded in this run (up to _RUN_VECTORS_KEPT)
        self.done = 0
        self.reading = True
        self.first_request: float | None = None
        self.last_answer = 0.0

    def tick(self) -> None:
        if self.progress is not None:
            self.progress(self.done, self.report.chunks, not self.reading)

    def _give(self, pending: _Pending, key: str, vector: np.ndarray) -> None:
        self.done += pending.give(key, vector)
        if pending.missing == 0 and self.unfinished.pop(id(pending), None) is not None:
            self.ready.append(pending)

    async def produce(self, files: list[Path], work: asyncio.Queue[tuple[str, str]], workers: int) -> None:
        group: list[tuple[Document, str]] = []
        for path in files:
            documents = await asyncio.to_thread(lambda p=path: list(read_documents(p, self.settings.readers)))
            for document in documents:
                self.report.documents += 1
                doc_hash = document_hash(document, self.chunker)
                if self.committed.get(document.doc_id) == doc_hash:
                    self.report.unchanged_documents += 1
                    continue
                group.append((document, doc_hash))
                if len(group) >= _DOCS_PER_TOKENIZE:
                    await self._chunk_group(group, work)
        await self._chunk_group(group, work)
        self.reading = False
        for _ in range(workers):
            await work.put(_STOP)
        self.tick()

    async def _chunk_group(self, group: list[tuple[Document, str]], work: asyncio.Queue[tuple[str, str]]) -> None:
        if not group:
            return
        chunked = await asyncio.to_thread(self.chunker.chunk_many, [document.text for document, _ in group])
        seen = [d.doc_id for d, _ in group if d.doc_id in self.committed]
        old = await asyncio.to_thread(self.store.vectors_of, seen)
        for (document, doc_hash), chunks in zip(group, chunked, strict=True):
            pending = _Pending(document, doc_hash, [c.text for c in chunks], [c.hash for c in chunks])
            self.unfinished[id(pending)] = pending
            self.report.chunks += len(chunks)
            for key in dict.fromkeys(pending.hashes):
                known = self.seen.get(key)
                if known is not None:  # embedded earlier in this run for another chunk of the same text
                    self._give(pending, key, known)
                    continue
                known = old.get(key)
                if known is None:
                    known = self.staged.get(key)
                if known is not None:
                    self.report.reused_chunks += pending.hashes.count(key)
                    self._give(pending, key, known)
                    continue
                already_queued = key in self.waiting
                self.waiting.setdefault(key, []).append(pending)
                if not already_queued:
                    await work.put((key, pending.texts[pending.hashes.index(key)]))
            if pending.missing == 0 and self.unfinished.pop(id(pending), None) is not None:
                self.ready.append(pending)
        group.clear()
        self.tick()

    async def embed_worker(self, work: asyncio.Queue[tuple[str, str]], batch: int) -> None:
        while True:
            items = [await work.get()]
            while items[-1] is not _STOP and len(items) < batch and not work.empty():
                items.append(work.get_nowait())
            stop = items[-1] is _STOP
            items = [item for item in items if item is not _STOP]
            if items:
                self.first_request = self.first_request or time.perf_counter()
                answer = await self.client.embed([text for _, text in items])
                self.last_answer = time.perf_counter()
                self.report.embedded_chunks += len(items)
                for (key, _), vector in zip(items, answer.vectors, strict=True):
                    self.fresh[key] = vector
                    if len(self.seen) < _RUN_VECTORS_KEPT:
                        self.seen[key] = vector
                    for pending in self.waiting.pop(key, []):
                        self._give(pending, key, vector)
                self.tick()
            if stop:
                return

    async def flush(self, stage: bool = True) -> None:
        """Commit complete documents (one atomic write); stage fresh vectors unfinished documents still wait on."""
        if self.ready:
            group, self.ready = self.ready, []
            await asyncio.to_thread(self.store.commit, [pending.update() for pending in group])
        if stage and self.fresh:
            needed = {key for pending in self.unfinished.values() for key in pending.hashes}
            keep = {key: vector for key, vector in self.fresh.items() if key in needed}
            self.fresh = {}
            await asyncio.to_thread(self.store.stage, keep)
        else:
            self.fresh = {}

    async def committer(self, stop: asyncio.Event) -> None:
        last = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.2)
            ready_chunks = sum(len(pending.texts) for pending in self.ready)
            if ready_chunks >= self.settings.indexing.commit_chunks or time.monotonic() - last >= (
                self.settings.indexing.stage_interval_s
            ):
                await self.flush()
                last = time.monotonic()


async def index_paths(
    paths: Iterable[Path],
    settings: SearchSettings,
    *,
    store: VectorStore,
    client: EmbeddingClient,
    chunker: Chunker,
    progress: Progress | None = None,
) -> IndexReport:
    """Index the files (and folders) ``paths``; returns what was done. Raises ReaderError, ModelMismatch,
    ServiceError or StoreError; after any of them (or a kill) the store holds every document committed so far and
    the staged vectors of the rest, for the next run to resume from."""
    started = time.perf_counter()
    run = _Run(settings, store, client, chunker)
    run.progress = progress
    files = expand_paths(paths)
    run.report.files = len(files)
    facts = await client.facts()
    if facts.task != "embed":
        raise SettingsError(f"{client.url} serves a {facts.task} model, not an embedding model")
    if facts.max_input_tokens and chunker.size + _SPECIAL_TOKENS > facts.max_input_tokens:
        raise SettingsError(
            f"chunks of {chunker.size} tokens are over the model's limit of {facts.max_input_tokens} "
            f"(with its {_SPECIAL_TOKENS} special tokens): lower chunking.tokens"
        )
    await bind_store(store, client, facts)
    run.committed = await asyncio.to_thread(store.document_hashes)
    run.staged = await asyncio.to_thread(store.staged_vectors)
    batch, in_flight = facts.batch_texts(settings.indexing.batch_texts), facts.in_flight(settings.indexing.in_flight)
    logger.info("indexing %d file(s): %d requests of up to %d texts in flight", len(files), in_flight, batch)
    requests_before = client.requests

    work: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=max(4 * batch * in_flight, 1024))
    stop = asyncio.Event()
    committing = asyncio.create_task(run.committer(stop))
    tasks = [asyncio.create_task(run.produce(files, work, in_flight))]
    tasks += [asyncio.create_task(run.embed_worker(work, batch)) for _ in range(in_flight)]
    try:
        finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in finished:
            task.result()  # the first failure, if any
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stop.set()
        await asyncio.gather(committing, return_exceptions=True)
        await run.flush(stage=True)  # also after a failure: keep what was done for the next run
    await asyncio.to_thread(store.clear_staged)
    report = run.report
    report.search = await asyncio.to_thread(store.ensure_index)
    report.requests = client.requests - requests_before
    report.embed_s = (run.last_answer - run.first_request) if run.first_request else 0.0
    report.elapsed_s = time.perf_counter() - started
    run.tick()
    return report
