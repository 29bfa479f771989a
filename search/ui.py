"""The Streamlit web UI (the seed's front end): search, index files, and what the store holds.

Started by ``search ui`` (``streamlit run search/ui.py -- --settings-json FILE``), which hands it the resolved settings
in a JSON file. Three tabs:

- **Search**: a query box; hits with score, source and the chunk, the query's words highlighted; the time of each
  stage (embed, search, rerank) and which instance embedded the query (the service's ``x-instance`` header).
- **Index**: upload .txt/.md/.jsonl/.csv files (kept in an ``uploads`` folder next to the store, so re-uploading a file
  re-embeds only its changed chunks) or name files/folders on the server; a progress bar with chunks/s.
- **Store**: documents, chunks, model, dimensions, the search in use.

Results are HTML with ``data-*`` attributes (``st.html``, sanitised by Streamlit) so a browser test can read them.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path

import streamlit as st

from search.errors import SearchError
from search.query import Searcher, SearchResult
from search.settings import LanceStoreSettings, SearchSettings
from search.stores.base import StoreSummary


def _settings() -> SearchSettings:
    parser = argparse.ArgumentParser()
    parser.add_argument("--settings-json", type=Path)
    known, _ = parser.parse_known_args(sys.argv[1:])
    if known.settings_json is None:
        return SearchSettings()
    return SearchSettings.model_validate_json(known.settings_json.read_text())


def _uploads(settings: SearchSettings) -> Path:
    store = settings.store
    folder = Path(store.path) / "uploads" if isinstance(store, LanceStoreSettings) else Path("search-uploads")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def highlight(text: str, query: str) -> str:
    """``text`` as HTML with the query's words (3+ letters) in <mark>, case-insensitively."""
    words = sorted({w for w in re.findall(r"\w{3,}", query.lower())}, key=len, reverse=True)
    escaped = html.escape(text)
    if not words:
        return escaped
    pattern = re.compile("|".join(re.escape(html.escape(w)) for w in words), re.IGNORECASE)
    return pattern.sub(lambda m: f"<mark>{m.group(0)}</mark>", escaped)


def results_html(result: SearchResult) -> str:
    timings = "".join(
        f'<span data-stage="{stage}" data-ms="{ms:.2f}">{stage}: {ms:.1f} ms</span> '
        for stage, ms in result.timings_ms.items()
    )
    head = (
        f'<div id="timings">{timings}<span data-field="instance">embedded by '
        f"{html.escape(result.instance or 'unknown')}</span></div>"
    )
    hits = "".join(
        f'<div class="hit" data-rank="{rank}" data-score="{hit.score:.6f}" data-source="{html.escape(hit.source)}">'
        f"<b>{rank}. {hit.score:.4f}</b> <code>{html.escape(hit.source)}</code>"
        f'<p class="chunk">{highlight(hit.text, result.query)}</p></div>'
        for rank, hit in enumerate(result.hits, start=1)
    )
    return f'<div id="results" data-hits="{len(result.hits)}">{head}{hits}</div>'


def summary_html(summary: StoreSummary) -> str:
    cells = "".join(
        f'<div><span>{name}</span> <b data-field="{name}">{html.escape(str(value))}</b></div>'
        for name, value in asdict(summary).items()
    )
    return f'<div id="summary">{cells}</div>'


async def _search(settings: SearchSettings, query: str, k: int, rerank: bool) -> SearchResult:
    from search.wiring import make_client, make_store

    store = make_store(settings)
    try:
        async with make_client(settings) as client, Searcher(settings, store, client) as searcher:
            return await searcher.search(query, k=k, rerank=rerank)
    finally:
        store.close()


def _index(settings: SearchSettings, paths: list[Path]) -> str:
    from search.indexer import index_paths
    from search.wiring import make_chunker, make_client, make_store

    bar = st.progress(0.0, text="reading files")
    started = time.perf_counter()

    def progress(done: int, known: int, all_read: bool) -> None:
        rate = done / max(time.perf_counter() - started, 1e-6)
        fraction = done / known if known and all_read else 0.0
        bar.progress(min(fraction, 1.0), text=f"{done} / {known} chunks, {rate:.1f} chunks/s")

    async def run() -> str:
        store = make_store(settings)
        try:
            async with make_client(settings) as client:
                chunker = make_chunker(settings, client.url)
                report = await index_paths(
                    paths, settings, store=store, client=client, chunker=chunker, progress=progress
                )
        finally:
            store.close()
        bar.progress(1.0, text=f"{report.embedded_chunks} chunks embedded, {report.chunks_per_s:.1f} chunks/s")
        return (
            f"{report.documents} documents ({report.unchanged_documents} unchanged), {report.chunks} chunks of changed "
            f"documents: {report.embedded_chunks} embedded in {report.requests} requests, {report.reused_chunks} reused"
        )

    return asyncio.run(run())


def main() -> None:
    settings = _settings()
    st.set_page_config(page_title="Semantic search", layout="wide")
    st.title("Semantic search")
    st.caption(f"embedding service {settings.url} · store {settings.store.kind}")
    search_tab, index_tab, store_tab = st.tabs(["Search", "Index", "Store"])

    with search_tab, st.form("search"):
        query = st.text_input("Query", key="query")
        k = st.number_input("Hits", min_value=1, max_value=100, value=10, key="k")
        rerank = st.checkbox("Rerank", value=False, disabled=settings.rerank.url is None, key="rerank")
        if st.form_submit_button("Search") and query.strip():
            try:
                result = asyncio.run(_search(settings, query, int(k), rerank))
            except SearchError as error:
                st.html(f'<div id="search-error" data-type="{error.error_type}">{html.escape(error.message)}</div>')
            else:
                st.html(results_html(result))

    with index_tab:
        uploaded = st.file_uploader("Files", type=["txt", "md", "jsonl", "csv"], accept_multiple_files=True)
        server_paths = st.text_input("…or files and folders on the server (comma-separated)", key="server_paths")
        if st.button("Index", key="index"):
            paths = [Path(p.strip()) for p in server_paths.split(",") if p.strip()]
            for upload in uploaded or []:
                target = _uploads(settings) / Path(upload.name).name
                target.write_bytes(upload.getvalue())
                paths.append(target)
            if not paths:
                st.warning("Choose files to index first.")
            else:
                try:
                    st.html(f'<div id="index-report">{html.escape(_index(settings, paths))}</div>')
                except SearchError as error:
                    st.html(f'<div id="index-error">{html.escape(error.message)}</div>')

    with store_tab:
        from search.wiring import make_store

        try:
            store = make_store(settings)
            try:
                st.html(summary_html(store.summary()))
            finally:
                store.close()
        except SearchError as error:
            st.error(error.message)


main()
