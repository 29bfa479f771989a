"""``POST /v1/search`` served by ``orchestrator up`` itself (a ``search:`` section in its config), behind its API key:
one real service (MiniLM, one CPU pool), a tiny corpus indexed through it, then the route with and without the key, a
malformed body, and the embedding route beside it."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from search.cli import search_app
from tests.integration.conftest import free_port, one_pool_config, start_up

pytestmark = pytest.mark.integration
KEY_ENV = "SEARCH_ROUTE_ITEST_KEY"
KEY = "itest-search-route-key"
DOCS = {
    "gpus.md": "A MIG slice is an isolated partition of an NVIDIA GPU with its own memory and compute engines.",
    "cooking.md": "Knead the bread dough for ten minutes, then let it rise in a warm kitchen until doubled.",
    "sailing.txt": "Trim the mainsail and ease the jib when the wind backs; the boat heels less on a reach.",
}


def test_the_service_answers_search_behind_its_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port, store, docs = free_port(), tmp_path / "store", tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    config = one_pool_config(tmp_path / "config.yaml", port, server_extra=f", api_key_env: {KEY_ENV}")
    # No api_key_env in the section: the route's calls to /v1/embeddings succeed only with the caller's key.
    config.write_text(config.read_text() + f"search: {{store: {{path: '{store}'}}}}\n")
    process = start_up(config, tmp_path / "up.log", env={**os.environ, "COLUMNS": "200", KEY_ENV: KEY})
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {KEY}"}
    try:
        monkeypatch.setenv(KEY_ENV, KEY)  # the index command runs in this process
        (tmp_path / "index.yaml").write_text(f"api_key_env: {KEY_ENV}\n")
        result = CliRunner().invoke(
            search_app,
            ["index", str(docs), "-s", str(tmp_path / "index.yaml"), "--url", url, "--store", str(store), "--json"],
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.output.strip().splitlines()[-1])["documents"] == 3

        with httpx.Client(base_url=url, timeout=30) as client:
            found = client.post("/v1/search", json={"query": "baking bread at home", "k": 2}, headers=auth)
            assert found.status_code == 200, found.text
            body = found.json()
            assert body["hits"][0]["source"] == str(docs / "cooking.md") and len(body["hits"]) == 2
            assert body["model"] == "all-MiniLM-L6-v2" and found.headers["x-instance"] == "pool-a"

            refused = client.post("/v1/search", json={"query": "baking bread"})
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "Unauthorized"
            assert refused.json()["error"]["type"] == "authentication_error"

            malformed = client.post("/v1/search", json={"query": "bread", "k": 0}, headers=auth)
            assert malformed.status_code == 422 and malformed.json()["error"]["code"] == "Validation"
            not_json = client.post("/v1/search", content=b"{query", headers=auth)
            assert not_json.status_code == 422 and "not JSON" in not_json.json()["error"]["message"]

            embedded = client.post("/v1/embeddings", json={"input": ["hello"]}, headers=auth)
            assert embedded.status_code == 200 and len(embedded.json()["data"][0]["embedding"]) == 384
            assert client.post("/v1/embeddings", json={"input": ["hello"]}).status_code == 401
            again = client.post("/v1/search", json={"query": "an isolated GPU partition", "k": 1}, headers=auth)
            assert again.status_code == 200 and again.json()["hits"][0]["source"] == str(docs / "gpus.md")
        assert process.poll() is None  # the errors above took nothing down
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
