"""Routing by model at the front door, and what each replica answers about the endpoint's models: /v1/models with
every name and alias, 404 listing them, the ``model`` extension on TEI's routes, /tokenize, /decode, /similarity, and
an ASGI app mounted under a prefix."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from orchestrator.contracts.catalogue import ModelCatalogue, ModelEntry
from orchestrator.contracts.errors import NoInstance
from orchestrator.contracts.forwarding import ForwardedRequest, ForwardedResponse
from orchestrator.frontdoor.app import FrontDoor
from orchestrator.frontdoor.model_routing import ModelRouter, open_router, requested_model
from tests.fakes import fake_service
from tests.unit.test_front_door import _call
from workers.asgi_bridge import call_asgi
from workers.http_api import build_app

CATALOGUE = ModelCatalogue(
    (
        ModelEntry("all-MiniLM-L6-v2", ("text-embedding-3-small",)),
        ModelEntry("tiny", ("Tiny-Alias",)),
        ModelEntry("ranker", (), "rerank"),
    )
)


class Named:
    """A transport answering with its own name, ready or not."""

    def __init__(self, name: str, ready: int = 1) -> None:
        self.name, self.ready, self.calls = name, ready, 0

    async def __call__(self, request: ForwardedRequest) -> ForwardedResponse:
        self.calls += 1
        if not self.ready:
            raise NoInstance(f"0 of 1 instances of {self.name} connected")
        return ForwardedResponse(200, (), self.name.encode())

    async def start(self, wait_s: float = 0.0) -> None: ...

    def readiness(self) -> tuple[int, int]:
        return self.ready, 1

    async def aclose(self) -> None: ...


def router(**ready: int) -> tuple[ModelRouter, dict[str, Named]]:
    transports = {name: Named(name, ready.get(name, 1)) for name in ("all-MiniLM-L6-v2", "tiny", "ranker")}
    return ModelRouter(CATALOGUE, transports), transports


def post(path: str, body: Any) -> ForwardedRequest:
    return ForwardedRequest("POST", path, b"", (), orjson.dumps(body) if not isinstance(body, bytes) else body)


@pytest.mark.parametrize(
    ("path", "body", "chosen"),
    [
        ("/v1/embeddings", {"input": "x", "model": "tiny"}, "tiny"),
        ("/v1/embeddings", {"input": "x", "model": "TEXT-EMBEDDING-3-SMALL"}, "all-MiniLM-L6-v2"),
        ("/embed", {"inputs": "x", "model": "tiny-alias"}, "tiny"),
        ("/embed", {"inputs": "x"}, "all-MiniLM-L6-v2"),  # no model: the default
        ("/v1/embeddings", {"input": "x", "model": "gpt-nope"}, "all-MiniLM-L6-v2"),  # its replica answers 404
        ("/v1/rerank", {"query": "q", "documents": ["d"], "model": "ranker"}, "ranker"),
        ("/tokenize", {"inputs": "x", "model": "tiny"}, "tiny"),
        ("/", {"inputs": "x"}, "all-MiniLM-L6-v2"),  # TEI's POST / is the default model's
        ("/embed", b'{"inputs": "x", "model": ', "all-MiniLM-L6-v2"),  # malformed: its replica says so
        ("/embed", {"inputs": 'a text mentioning "model" only'}, "all-MiniLM-L6-v2"),
    ],
)
def test_a_request_goes_to_the_instances_of_the_model_it_names(path: str, body: Any, chosen: str) -> None:
    routing, _ = router()
    assert routing.transport_for(post(path, body)).name == chosen  # type: ignore[attr-defined]


def test_a_model_neutral_request_goes_to_any_model_with_a_running_instance() -> None:
    routing, _ = router(**{"all-MiniLM-L6-v2": 0})
    health = ForwardedRequest("GET", "/health", b"", (), b"")
    assert routing.transport_for(health).name == "tiny"  # type: ignore[attr-defined]
    assert routing.readiness() == (2, 3)
    assert routing.readiness_by_model()["all-MiniLM-L6-v2"] == (0, 1)


def test_one_model_down_leaves_the_others_serving() -> None:
    routing, transports = router(tiny=0)
    door = FrontDoor(max_request_bytes=1000, request_timeout_s=5)
    door.attach(routing, routing.readiness)
    status, _, body = asyncio.run(_call(door, "POST", "/v1/embeddings", orjson.dumps({"input": "x", "model": "tiny"})))
    assert status == 503 and b"of tiny connected" in body
    status, _, body = asyncio.run(_call(door, "POST", "/v1/embeddings", b'{"input": "x"}'))
    assert (status, body) == (200, b"all-MiniLM-L6-v2")


def test_a_one_model_endpoint_uses_its_transport_unwrapped() -> None:
    only = Named("m")
    assert open_router(ModelCatalogue((ModelEntry("m"),)), {"m": only}) is only


def test_requested_model_reads_only_the_top_level_string() -> None:
    assert requested_model(b'{"input": "x", "model": "a"}') == "a"
    assert requested_model(b'{"input": {"model": "a"}}') is None
    assert requested_model(b'{"model": 3}') is None
    assert requested_model(b'["model"]') is None
    assert requested_model(b"no json") is None


@pytest.fixture
def client(minilm_folder: Path) -> TestClient:
    service = fake_service(minilm_folder)
    return TestClient(build_app(service, models=CATALOGUE), raise_server_exceptions=False)


def test_v1_models_lists_every_name_and_alias(client: TestClient) -> None:
    listed = client.get("/v1/models").json()
    assert [card["id"] for card in listed["data"]] == [
        "all-MiniLM-L6-v2",
        "text-embedding-3-small",
        "tiny",
        "Tiny-Alias",
        "ranker",
    ]
    assert client.get("/v1/models/tiny-alias").json()["id"] == "Tiny-Alias"
    missing = client.get("/v1/models/gpt-4")
    assert missing.status_code == 404 and "'tiny', 'Tiny-Alias'" in missing.json()["error"]["message"]


def test_an_unknown_model_is_404_listing_the_served_names_on_every_route(client: TestClient) -> None:
    answer = client.post("/v1/embeddings", json={"input": "x", "model": "gpt-nope"})
    message = answer.json()["error"]["message"]
    assert answer.status_code == 404
    assert message == (
        "model 'gpt-nope' is not served here; this endpoint serves 'all-MiniLM-L6-v2', 'text-embedding-3-small', "
        "'tiny', 'Tiny-Alias', 'ranker'"
    )
    tei = client.post("/embed", json={"inputs": "x", "model": "gpt-nope"})
    assert tei.status_code == 404 and tei.json()["error_type"] == "NotFound"
    assert client.post("/embed", json={"inputs": "x", "model": "text-embedding-3-small"}).status_code == 200
    other = client.post("/embed", json={"inputs": "x", "model": "tiny"})
    assert other.status_code == 404 and "this one serves 'all-MiniLM-L6-v2'" in other.json()["error"]


def test_tokenize_and_decode_round_trip(client: TestClient) -> None:
    tokens = client.post("/tokenize", json={"inputs": ["Hello MIG slices"]}).json()
    (row,) = tokens
    assert row[0] == {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None}
    assert row[1] == {"id": row[1]["id"], "text": "Hello", "special": False, "start": 0, "stop": 5}
    assert row[-1]["special"] is True
    ids = [token["id"] for token in row]
    assert client.post("/decode", json={"ids": ids}).json() == ["hello mig slices"]
    assert (
        client.post("/decode", json={"ids": [ids, ids[1:2]], "skip_special_tokens": False})
        .json()[0]
        .startswith("[CLS]")
    )
    bare = client.post("/tokenize", json={"inputs": "Hello", "add_special_tokens": False}).json()
    assert [token["text"] for token in bare[0]] == ["Hello"]
    bad = client.post("/decode", json={"ids": [10_000_000]})
    assert bad.status_code == 422 and "not a token id" in bad.json()["error"]


def test_similarity_is_the_cosine_of_the_normalised_vectors(client: TestClient) -> None:
    body = {"inputs": {"source_sentence": "a b", "sentences": ["a b", "c d e", "f"]}}
    scores = client.post("/similarity", json=body).json()
    vectors = np.asarray(client.post("/embed", json={"inputs": ["a b", "a b", "c d e", "f"]}).json())
    assert scores == pytest.approx(list(vectors[1:] @ vectors[0]), abs=1e-6)
    assert scores[0] == pytest.approx(1.0, abs=1e-6)
    empty = client.post("/similarity", json={"inputs": {"source_sentence": "", "sentences": ["x"]}})
    assert empty.status_code == 400


def test_an_app_mounted_under_a_prefix_answers_there_and_nothing_else_changes() -> None:
    seen: list[dict[str, Any]] = []

    async def search(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"search"})

    door = FrontDoor(max_request_bytes=100, request_timeout_s=5)
    door.attach(Named("m"))
    door.mount("/v1/search", search)
    assert asyncio.run(_call(door, "POST", "/v1/search", b"{}"))[2] == b"search"
    assert asyncio.run(_call(door, "GET", "/v1/search/collections"))[2] == b"search"
    assert seen[-1]["root_path"] == "/v1/search" and seen[-1]["path"] == "/v1/search/collections"
    assert asyncio.run(_call(door, "GET", "/v1/searchx"))[2] == b"m"
    with pytest.raises(ValueError, match="must start with"):
        door.mount("v1/x/", search)


def test_through_real_instance_apps_of_two_models(minilm_folder: Path) -> None:
    """Front door -> model router -> each model's replica app, as ``up`` wires them with direct lanes."""
    apps = {
        "all-MiniLM-L6-v2": build_app(fake_service(minilm_folder), models=CATALOGUE),
        "tiny": build_app(fake_service(minilm_folder, model_name="tiny", instance="tiny-0"), models=CATALOGUE),
        "ranker": build_app(fake_service(minilm_folder, model_name="ranker", instance="r-0"), models=CATALOGUE),
    }

    class AppTransport(Named):
        async def __call__(self, request: ForwardedRequest) -> ForwardedResponse:
            return await call_asgi(apps[self.name], request)

    door = FrontDoor(max_request_bytes=2000, request_timeout_s=5)
    door.attach(ModelRouter(CATALOGUE, {name: AppTransport(name) for name in apps}))
    status, headers, body = asyncio.run(
        _call(door, "POST", "/v1/embeddings", orjson.dumps({"input": "x", "model": "Tiny-Alias"}))
    )
    assert status == 200 and headers[b"x-instance"] == b"tiny-0" and orjson.loads(body)["model"] == "tiny"
    status, _, body = asyncio.run(_call(door, "POST", "/v1/embeddings", orjson.dumps({"input": "x", "model": "?"})))
    assert status == 404 and b"'ranker'" in body
