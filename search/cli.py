"""``search_app``: the typer app behind ``orchestrator search ...`` (index, query, summary, ui).

Options override the settings file (``--settings``, YAML or JSON: ``search.settings``). Without ``--url`` the
embedding service is the one ``orchestrator up`` runs on this machine. Exit codes: 2 when settings, input files or
the store's model are wrong (nothing was changed), 1 when the service or the store failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from search.errors import SearchError
from search.settings import SearchSettings, load_settings, with_overrides

search_app = typer.Typer(
    help="Semantic search over files, embedded by the service (index, query, summary, ui).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console()

SettingsOption = Annotated[Path | None, typer.Option("--settings", "-s", help="A YAML or JSON settings file.")]
UrlOption = Annotated[
    str | None, typer.Option(help="The embedding service (default: the one orchestrator up runs here).")
]
StoreOption = Annotated[Path | None, typer.Option("--store", help="A LanceDB store folder (default: ./search-store).")]
PgOption = Annotated[str | None, typer.Option("--pg", help="A PostgreSQL DSN: use a pgvector store instead.")]


def _settings(path: Path | None, **overrides: object) -> SearchSettings:
    return with_overrides(load_settings(path), **overrides)


def _fail(error: SearchError) -> typer.Exit:
    console.print(f"[red]error:[/red] {error.message}", highlight=False)
    return typer.Exit(error.exit_code)


async def _index(settings: SearchSettings, paths: list[Path], show: bool) -> dict[str, object]:
    from search.indexer import index_paths
    from search.wiring import make_chunker, make_client, make_store

    client = make_client(settings)
    chunker = make_chunker(settings, client.url)
    store = make_store(settings)
    bar = Progress(
        TextColumn("indexing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("chunks  {task.fields[rate]:>7.1f} chunks/s"),
        TimeElapsedColumn(),
        console=console,
        disable=not show,
    )
    task = bar.add_task("index", total=None, rate=0.0)
    started = time.perf_counter()

    def progress(done: int, known: int, all_read: bool) -> None:
        rate = done / max(time.perf_counter() - started, 1e-6)
        bar.update(task, completed=done, total=known if all_read else max(known, 1) * 2, rate=rate)

    try:
        with bar:
            async with client:
                report = await index_paths(
                    paths, settings, store=store, client=client, chunker=chunker, progress=progress
                )
    finally:
        store.close()
    return {**asdict(report), "chunks_per_s": round(report.chunks_per_s, 1)}


@search_app.command("index")
def index_command(
    paths: Annotated[list[Path], typer.Argument(help="Files (.txt .md .jsonl .csv) or folders to index.")],
    settings_file: SettingsOption = None,
    url: UrlOption = None,
    store: StoreOption = None,
    pg: PgOption = None,
    tokens: Annotated[int | None, typer.Option(help="Tokens per chunk (default 128).")] = None,
    overlap: Annotated[int | None, typer.Option(help="Tokens shared by consecutive chunks (default 16).")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Model folder, tokenizer.json or model package.")] = None,
    text_field: Annotated[str | None, typer.Option(help="The .jsonl key / .csv column of the text.")] = None,
    id_field: Annotated[str | None, typer.Option(help="The .jsonl key / .csv column naming each record.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON, no progress bar.")] = False,
) -> None:
    """Index files: chunk by tokens, embed only new or changed chunks, commit whole documents atomically."""
    try:
        settings = _settings(
            settings_file,
            url=url,
            store_path=store,
            store_dsn=pg,
            tokens=tokens,
            overlap=overlap,
            tokenizer=tokenizer,
            text_field=text_field,
            id_field=id_field,
        )
        report = asyncio.run(_index(settings, paths, show=not as_json))
    except SearchError as error:
        raise _fail(error) from None
    if as_json:
        typer.echo(json.dumps(report))
        return
    console.print(
        f"{report['documents']} documents in {report['files']} file(s): {report['unchanged_documents']} unchanged; "
        f"{report['chunks']} chunks of changed documents, {report['embedded_chunks']} embedded "
        f"({report['requests']} requests, {report['chunks_per_s']} chunks/s), {report['reused_chunks']} reused; "
        f"search: {report['search']}",
        highlight=False,
    )


async def _query(settings: SearchSettings, text: str, k: int, sources: list[str], rerank: bool, exact: bool):  # noqa: ANN202
    from search.query import Searcher
    from search.wiring import make_client, make_store

    store = make_store(settings)
    try:
        async with make_client(settings) as client, Searcher(settings, store, client) as searcher:
            return await searcher.search(text, k=k, sources=sources or None, rerank=rerank, exact=exact)
    finally:
        store.close()


@search_app.command("query")
def query_command(
    text: Annotated[str, typer.Argument(help="What to search for.")],
    k: Annotated[int, typer.Option("-k", help="How many hits.")] = 10,
    rerank: Annotated[bool, typer.Option("--rerank", help="Re-score with the reranker at rerank.url.")] = False,
    source: Annotated[list[str] | None, typer.Option(help="Only hits from this file (repeatable).")] = None,
    exact: Annotated[bool, typer.Option("--exact", help="Bypass the ANN index.")] = False,
    settings_file: SettingsOption = None,
    url: UrlOption = None,
    store: StoreOption = None,
    pg: PgOption = None,
    rerank_url: Annotated[str | None, typer.Option(help="A service answering POST /v1/rerank.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print hits and timings as JSON.")] = False,
) -> None:
    """Search the store: embed the query (with the model's query instruction), find the nearest chunks."""
    try:
        settings = _settings(settings_file, url=url, store_path=store, store_dsn=pg, rerank_url=rerank_url)
        result = asyncio.run(_query(settings, text, k, list(source or []), rerank, exact))
    except SearchError as error:
        raise _fail(error) from None
    if as_json:
        typer.echo(json.dumps(asdict(result)))
        return
    for rank, hit in enumerate(result.hits, start=1):
        snippet = " ".join(hit.text.split())
        console.print(f"{rank:>2}. {hit.score:.4f}  {hit.source}  {snippet[:100]}", highlight=False, soft_wrap=True)
    timings = ", ".join(f"{stage} {ms:.1f} ms" for stage, ms in result.timings_ms.items())
    console.print(f"{len(result.hits)} hits; {timings}; embedded by {result.instance or 'unknown'}", highlight=False)


@search_app.command("summary")
def summary_command(settings_file: SettingsOption = None, store: StoreOption = None, pg: PgOption = None) -> None:
    """What the store holds: documents, chunks, model, dimensions, the search in use."""
    from search.stores import open_store

    try:
        opened = open_store(_settings(settings_file, store_path=store, store_dsn=pg))
        try:
            summary = opened.summary()
        finally:
            opened.close()
    except SearchError as error:
        raise _fail(error) from None
    typer.echo(json.dumps(asdict(summary)))


@search_app.command("ui")
def ui_command(
    settings_file: SettingsOption = None,
    url: UrlOption = None,
    store: StoreOption = None,
    pg: PgOption = None,
    rerank_url: Annotated[str | None, typer.Option(help="A service answering POST /v1/rerank.")] = None,
    port: Annotated[int, typer.Option(help="Port of the web UI.")] = 8501,
    host: Annotated[str, typer.Option(help="Address the web UI listens on.")] = "127.0.0.1",
) -> None:
    """Start the Streamlit web UI (search, index files, store summary) until Ctrl-C."""
    try:
        settings = _settings(settings_file, url=url, store_path=store, store_dsn=pg, rerank_url=rerank_url)
        from search.settings import resolve_url

        settings = settings.model_copy(update={"url": resolve_url(settings)})
    except SearchError as error:
        raise _fail(error) from None
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="search-ui-", delete=False) as handle:
        handle.write(settings.model_dump_json())
    console.print(f"Search UI at http://{host}:{port}  (embedding service {settings.url})", highlight=False)
    command = ui_command_line(Path(handle.name), host, port)
    try:
        raise typer.Exit(subprocess.call(command, env=ui_environment()))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    finally:
        Path(handle.name).unlink(missing_ok=True)


def ui_environment() -> dict[str, str]:
    """This process's environment, with the folder holding the ``search`` package first on PYTHONPATH: Streamlit puts
    only the script's own folder on sys.path, and ui.py imports the same package the CLI runs from."""
    root = str(Path(__file__).resolve().parent.parent)
    existing = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + existing if existing else "")}


def ui_command_line(settings_json: Path, host: str, port: int) -> list[str]:
    """``streamlit run search/ui.py`` headless, on ``host:port``, telling Streamlit not to phone home."""
    ui = Path(__file__).with_name("ui.py")
    return [
        sys.executable, "-m", "streamlit", "run", str(ui),
        "--server.headless", "true",
        "--server.address", host,
        "--server.port", str(port),
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
        "--server.fileWatcherType", "none",
        "--", "--settings-json", str(settings_json),
    ]  # fmt: skip


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    search_app()
