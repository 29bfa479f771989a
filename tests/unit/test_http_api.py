"""The HTTP contract of one instance, in-process: real tokenizer, fake model, every error path."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.fakes import FakeBackend, fake_service
from workers.batcher import Batcher
from workers.http_api import build_app
from workers.service import EmbeddingService, ServiceInfo
from workers.tokenizer import TextTokenizer

MAX_TOKENS = 32


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend(dimensions=8)


@pytest.fixture
def client(minilm_folder: Path, backend: FakeBackend) -> Iterator[TestClient]:
    service = fake_service(minilm_folder, backend, max_input_tokens=MAX_TOKENS)
    with TestClient(build_app(service), raise_server_exceptions=False) as c:
        yield c


def unit(vector: list[float]) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float32)
    return array / np.linalg.norm(array)


def test_openai_float_shape_and_usage(client: TestClient) -> None:
    response = client.post("/v1/embeddings", json={"input": ["hello world", "hi"], "model": "all-minilm-l6-v2"})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list" and body["model"] == "all-MiniLM-L6-v2"
    assert [item["index"] for item in body["data"]] == [0, 1]
    assert all(item["object"] == "embedding" and len(item["embedding"]) == 8 for item in body["data"])
    # [CLS] hello world [SEP] = 4 tokens, [CLS] hi [SEP] = 3
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert np.linalg.norm(body["data"][0]["embedding"]) == pytest.approx(1.0, abs=1e-6)
    assert response.headers["x-instance"] == "pool-0" and response.headers["x-compute-tokens"] == "7"


def test_openai_single_string_and_base64(client: TestClient) -> None:
    as_float = client.post("/v1/embeddings", json={"input": "hello world"}).json()["data"][0]["embedding"]
    encoded = client.post("/v1/embeddings", json={"input": "hello world", "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(encoded["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, as_float, atol=1e-7)


def service_client(minilm_folder: Path, backend: FakeBackend, **overrides: object) -> TestClient:
    return TestClient(build_app(fake_service(minilm_folder, backend, max_input_tokens=MAX_TOKENS, **overrides)))


def test_token_ids_are_refused_by_default_naming_the_langchain_option(client: TestClient, backend: FakeBackend) -> None:
    """Issue 18: LangChain's default OpenAIEmbeddings sends tiktoken ids, which were read as MiniLM's own vocabulary
    and answered 200 with unrelated vectors (or 422 "outside the vocabulary" when an id happened to be too big)."""
    for ids in ([[12840, 374, 386, 1953, 30]], [12840, 374], [[101, 7592, 102], [101, 102]], [[100257]]):
        refused = client.post("/v1/embeddings", json={"input": ids, "model": "all-MiniLM-L6-v2"})
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "Validation"
        assert "check_embedding_ctx_length=False" in error["message"]
        assert "server.accept_token_ids: true" in error["message"]
    assert backend.batches == []  # nothing reached the model


def test_token_ids_when_the_server_accepts_them(minilm_folder: Path, backend: FakeBackend) -> None:
    with service_client(minilm_folder, backend, accept_token_ids=True) as client:
        single = client.post("/v1/embeddings", json={"input": [101, 7592, 102]})
        many = client.post("/v1/embeddings", json={"input": [[101, 7592, 102], [101, 102]]})
        assert single.status_code == 200 and len(single.json()["data"]) == 1
        assert many.status_code == 200 and many.json()["usage"]["prompt_tokens"] == 5
        bad = client.post("/v1/embeddings", json={"input": [[101, 99999999]]})
        assert bad.status_code == 422 and "outside the vocabulary" in bad.json()["error"]["message"]


def test_dimensions_truncate_then_renormalise(client: TestClient, backend: FakeBackend) -> None:
    full = client.post("/embed", json={"inputs": "hello world", "normalize": False}).json()[0]
    short = client.post("/v1/embeddings", json={"input": "hello world", "dimensions": 3}).json()["data"][0]
    assert np.allclose(short["embedding"], unit(full[:3]), atol=1e-6)
    too_big = client.post("/v1/embeddings", json={"input": "x", "dimensions": 9})
    assert too_big.status_code == 422 and "between 1 and 8" in too_big.json()["error"]["message"]


def test_tei_embed_returns_bare_arrays(client: TestClient) -> None:
    response = client.post("/embed", json={"inputs": ["a b", "c"]})
    assert response.status_code == 200
    vectors = response.json()
    assert len(vectors) == 2 and all(len(v) == 8 for v in vectors)
    raw = client.post("/embed", json={"inputs": "a b", "normalize": False}).json()[0]
    assert np.allclose(vectors[0], unit(raw), atol=1e-6)


LONG_TEXT = " ".join(f"w{n}" for n in range(100))  # 300 tokens, over the fixture's limit of 32


def test_truncation_on_off_and_direction(client: TestClient, backend: FakeBackend) -> None:
    refused = client.post("/embed", json={"inputs": LONG_TEXT, "truncate": False})
    assert refused.status_code == 422
    assert refused.json()["error_type"] == "Validation" and "limit of 32" in refused.json()["error"]
    assert client.post("/embed", json={"inputs": LONG_TEXT, "truncate": True}).status_code == 200
    right = backend.batches[-1][0]
    left_ok = client.post("/embed", json={"inputs": LONG_TEXT, "truncate": True, "truncation_direction": "Left"})
    assert left_ok.status_code == 200
    left = backend.batches[-1][0]
    assert len(right) == len(left) == MAX_TOKENS
    assert right[0] == left[0] == 101 and right[-1] == left[-1] == 102  # special tokens kept
    assert right[1:-1] != left[1:-1]
    openai = client.post("/v1/embeddings", json={"input": LONG_TEXT, "truncate": False})
    assert openai.status_code == 422 and openai.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(("path", "key"), [("/v1/embeddings", "input"), ("/embed", "inputs")])
def test_long_texts_are_truncated_by_default_as_tei_does(
    client: TestClient, backend: FakeBackend, path: str, key: str
) -> None:
    """Issue 18: a 1,500-character chunk got 422 on /v1/embeddings, with no way to ask for truncation there."""
    chunk = ("MIG slices a GPU into isolated instances. " * 40)[:1500]
    answer = client.post(path, json={key: chunk})
    assert answer.status_code == 200, answer.text
    cut = backend.batches[-1][0]
    assert len(cut) == MAX_TOKENS and cut[0] == 101 and cut[-1] == 102  # kept the start, as truncate: true does
    assert client.post(path, json={key: chunk, "truncate": True}).status_code == 200
    assert backend.batches[-1][0] == cut


ROUTES = [("/v1/embeddings", "input"), ("/embeddings", "input"), ("/embed", "inputs"), ("/", "inputs")]


@pytest.mark.parametrize(("path", "key"), [*ROUTES, ("/invocations", "inputs")])
def test_without_auto_truncate_the_advice_works_on_the_route_that_gave_it(
    minilm_folder: Path, backend: FakeBackend, path: str, key: str
) -> None:
    """Issue 18: /v1/embeddings advised "set truncate to true" and then refused truncate as an unknown field."""
    with service_client(minilm_folder, backend, auto_truncate=False, accept_token_ids=True) as client:
        inputs: list[object] = [
            LONG_TEXT,
            "telecommunications " * 60,
        ]  # too many tokens; too many characters to tokenise at all
        if key == "input":
            inputs.append(list(range(1000, 1000 + MAX_TOKENS + 5)))  # too many token ids
        for item in inputs:
            refused = client.post(path, json={key: item})
            assert refused.status_code == 422, refused.text
            body = refused.json()
            message = body["error"]["message"] if key == "input" else body["error"]
            assert message.endswith("shorten it or set truncate to true"), message
            followed = client.post(path, json={key: item, "truncate": True})
            assert followed.status_code == 200, followed.text
            assert len(backend.batches[-1][0]) == MAX_TOKENS


@pytest.mark.parametrize(
    ("path", "payload", "status", "fragment"),
    [
        ("/v1/embeddings", {"input": []}, 400, "empty"),
        ("/v1/embeddings", {"input": ""}, 400, "empty"),
        ("/embed", {"inputs": []}, 400, "empty"),
        ("/embed", {"inputs": ["ok", ""]}, 400, "empty"),
        ("/v1/embeddings", {"input": 42}, 422, "input"),
        ("/v1/embeddings", {"input": ["a", 1]}, 422, "input"),
        ("/v1/embeddings", {"inputs": ["a"]}, 422, "unknown field"),
        ("/embed", {"inputs": "a", "normalise": True}, 422, "unknown field"),
        ("/v1/embeddings", {"input": ["a"] * 11}, 422, "limit of 10"),
        ("/v1/embeddings", {"input": "a", "encoding_format": "int8"}, 422, "encoding_format"),
        ("/v1/embeddings", {"input": "a", "model": "text-embedding-3-small"}, 404, "not served here"),
        ("/embed", {"inputs": "a", "prompt_name": "query"}, 422, "not defined for this model"),
        ("/v1/embeddings", {"input": "a", "prompt_name": "query"}, 422, "not defined for this model"),
        ("/embed", {"inputs": "a", "truncation_direction": "middle"}, 422, "truncation_direction"),
        ("/embed", ["a"], 422, "body"),
    ],
)
def test_bad_input_gets_its_status(client: TestClient, path: str, payload: object, status: int, fragment: str) -> None:
    response = client.post(path, json=payload)
    assert response.status_code == status, response.text
    body = response.json()
    message = body["error"]["message"] if path.startswith("/v1/") else body["error"]
    assert fragment in message.lower() or fragment in message
    key = "input" if path.startswith("/v1/") else "inputs"
    assert client.post(path, json={key: "still serving"}).status_code == 200


def test_malformed_json_invalid_utf8_and_empty_body(client: TestClient) -> None:
    for body in (b"{not json", b'{"input": "\xff\xfe"}', b""):
        response = client.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, body
        assert response.json()["error"]["type"] == "invalid_request_error"
    tei = client.post("/embed", content=b"[1,", headers={"content-type": "application/json"})
    assert tei.status_code == 400 and tei.json()["error_type"] == "Validation"


def test_oversized_body_is_413(client: TestClient) -> None:
    response = client.post("/v1/embeddings", json={"input": "x" * 5000})
    assert response.status_code == 413 and "limit of 2000 bytes" in response.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no content-length: the stream is counted as it arrives
        yield b'{"input": "'
        yield b"y" * 3000
        yield b'"}'

    streamed = client.post("/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413


def test_overload_is_429_with_retry_after(client: TestClient, backend: FakeBackend) -> None:
    import threading

    backend.gate.clear()
    backend.entered.clear()
    results: list[int] = []
    blocker = threading.Thread(
        target=lambda: results.append(client.post("/embed", json={"inputs": ["a"] * 10}).status_code)
    )
    blocker.start()
    try:
        assert backend.entered.wait(timeout=10)  # 10 texts are computing (held at the gate); the queue holds 16
        response = client.post("/embed", json={"inputs": ["b"] * 10})
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1" and response.json()["error_type"] == "Overloaded"
    finally:
        backend.gate.set()
        blocker.join()
    assert results == [200]
    assert client.post("/embed", json={"inputs": "after"}).status_code == 200


def test_backend_failure_is_424_and_service_keeps_serving(client: TestClient, backend: FakeBackend) -> None:
    backend.fail_next = True
    failed = client.post("/v1/embeddings", json={"input": "x"})
    assert failed.status_code == 424 and "simulated model failure" in failed.json()["error"]["message"]
    assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 200


def test_unknown_route_and_method(client: TestClient) -> None:
    missing = client.get("/nope")
    assert missing.status_code == 404 and missing.json()["error_type"] == "NotFound"
    wrong_method = client.get("/v1/embeddings")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_health_and_info(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok", "instance": "pool-0"}
    info = client.get("/info").json()
    assert info["model_id"] == "all-MiniLM-L6-v2" and info["max_input_length"] == MAX_TOKENS
    assert info["max_client_batch_size"] == 10 and info["dimensions"] == 8


def test_openapi_schema_lists_request_bodies(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "input" in body["properties"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"input": ' + b"[" * 980 + b"]" * 980 + b"}", 422),  # deeply nested: a validation error, no crash
        (b'{"input": ' + b"9" * 400 + b"}", 400),  # a number too big for any type
        (b'{"input": "tab\\t newline\\n nul\\u0000 bell\\u0007"}', 200),  # control characters are text
        (b'{"input": ["\\ud800"]}', 400),  # a lone surrogate is not valid text
        (b'{"input": 1e999}', 400),
    ],
)
def test_hostile_bodies(client: TestClient, body: bytes, status: int) -> None:
    response = client.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert client.post("/v1/embeddings", json={"input": "still serving"}).status_code == 200


def test_huge_lists_and_strings_are_refused_cheaply(client: TestClient) -> None:
    many = client.post("/embed", json={"inputs": ["a"] * 100_000})
    assert many.status_code == 413  # 100k inputs are over the 2000-byte body limit of this fixture
    big = client.post("/embed", content=b'{"inputs": "' + b"x" * 10_000_000 + b'"}')
    assert big.status_code == 413
    assert client.post("/embed", json={"inputs": ["a"] * 11}).status_code == 422  # under the body limit: count


def test_deadline_answers_504_and_drops_the_waiting_texts(minilm_folder: Path) -> None:
    backend = FakeBackend()
    batcher = Batcher(backend.embed, max_batch_size=1, max_batch_tokens=512, max_wait_ms=0, max_queued_texts=16)
    info = ServiceInfo("m", "pool-0", MAX_TOKENS, 512, 10, 10_000, True, "mean", backend.info, request_timeout_s=0.3)
    service = EmbeddingService(TextTokenizer(minilm_folder, MAX_TOKENS), batcher, info)
    with TestClient(build_app(service)) as client:
        backend.gate.clear()  # the model hangs
        slow = client.post("/v1/embeddings", json={"input": ["a", "b", "c"]})
        assert slow.status_code == 504 and slow.json()["error"]["type"] == "timeout_error"
        backend.gate.set()
        assert client.post("/v1/embeddings", json={"input": "after"}).status_code == 200
        # Only the text that was computing when the deadline passed reached the model; "b" and "c" were dropped.
        computed = [len(batch) for batch in backend.batches]
        assert sum(computed) == 2 and batcher.stats().queued_texts == 0
        failures = service.metrics.failures
        assert failures["Timeout"] == 1


async def test_health_answers_while_a_large_request_is_tokenising(minilm_folder: Path) -> None:
    """Issue 14, finding 4: tokenising a large request ran on the event loop, stalling /health and every request."""
    import asyncio
    import threading

    import httpx

    service = fake_service(minilm_folder, max_input_tokens=MAX_TOKENS, max_request_bytes=100_000)
    tokenizer = service.tokenizer
    encode = tokenizer.encode
    health_answered = threading.Event()
    threads: list[int] = []

    def held_encode(*args, **kwargs):  # type: ignore[no-untyped-def]
        threads.append(threading.get_ident())
        if len(args[0]) > 1:  # the large request: hold it until /health has answered (or give up after 10 s)
            health_answered.wait(timeout=10)
        return encode(*args, **kwargs)

    tokenizer.encode = held_encode  # type: ignore[method-assign]
    transport = httpx.ASGITransport(app=build_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
        large = asyncio.create_task(client.post("/embed", json={"inputs": ["hello world " * 25] * 4, "truncate": True}))
        for _ in range(1000):  # until the large request is being tokenised
            await asyncio.sleep(0.005)
            if threads:
                break
        health = await client.get("/health")
        health_answered.set()
        assert health.status_code == 200
        assert (await large).status_code == 200
        small = await client.post("/embed", json={"inputs": "a short query"})
        assert small.status_code == 200
    loop_thread = threading.get_ident()
    assert threads[0] != loop_thread  # 1,200 characters: tokenised in a worker thread
    assert threads[1] == loop_thread  # a short query is cheaper than the hop to a thread


def test_work_past_the_deadline_is_429_at_once_with_retry_after(minilm_folder: Path) -> None:
    """Issue 14, finding 7: queued work past the deadline was accepted, then answered 504 a minute later."""
    import threading
    import time

    from tests.fakes import ManualClock

    clock = ManualClock()
    backend = FakeBackend()

    def model(batch):  # type: ignore[no-untyped-def]
        clock.now += 0.1 * (32 + sum(len(ids) for ids in batch))  # 0.1 s a token, a pass costing 32 tokens
        return backend.embed(batch)

    batcher = Batcher(model, 8, 512, max_wait_ms=0, max_queued_texts=64, batch_overhead_tokens=32.0, clock=clock)
    info = ServiceInfo("m", "pool-0", MAX_TOKENS, 512, 10, 10_000, True, "mean", backend.info, request_timeout_s=10)
    service = EmbeddingService(TextTokenizer(minilm_folder, MAX_TOKENS), batcher, info)
    with TestClient(build_app(service)) as client:
        assert client.post("/embed", json={"inputs": "measure"}).status_code == 200  # the speed is now known
        backend.gate.clear()
        backend.entered.clear()
        results: list[int] = []
        blocker = threading.Thread(
            target=lambda: results.append(client.post("/embed", json={"inputs": ["a"] * 10}).status_code)
        )
        blocker.start()
        try:
            assert backend.entered.wait(timeout=10)
            # 10 + 10 texts of 3 tokens and 3 passes: (60 + 96) x 0.1 s = 15.6 s, past 90 % of the 10 s deadline.
            refused = client.post("/v1/embeddings", json={"input": ["b"] * 10})
            assert refused.status_code == 429, refused.text
            assert refused.headers["retry-after"] == "7" and refused.json()["error"]["type"] == "rate_limit_error"
            assert "too close to the 10 s deadline" in refused.json()["error"]["message"]
            # A small request still fits: it waits for about one text of the other request, not all ten.
            small = threading.Thread(
                target=lambda: results.append(client.post("/embed", json={"inputs": "c"}).status_code)
            )
            small.start()
            for _ in range(1000):  # until it is queued (or refused), with the ten texts still held
                if batcher.stats().queued_texts == 11 or results:
                    break
                time.sleep(0.01)
        finally:
            backend.gate.set()
            blocker.join()
        small.join()
    assert results == [200, 200] and batcher.stats().queued_texts == 0


async def test_an_abandoned_request_leaves_the_in_flight_count(minilm_folder: Path) -> None:
    """Issue 14, finding 9: a cancelled request (CancelledError) was never counted as finished."""
    import asyncio

    from orchestrator.contracts.forwarding import ForwardedRequest
    from workers.asgi_bridge import call_asgi

    backend = FakeBackend()
    service = fake_service(minilm_folder, backend)
    app = build_app(service)
    backend.gate.clear()  # the model hangs: the request stays in flight
    request = ForwardedRequest("POST", "/embed", b"", ((b"content-type", b"application/json"),), b'{"inputs": "x"}')
    call = asyncio.ensure_future(call_asgi(app, request))
    while service.metrics.in_flight == 0:
        await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert service.metrics.in_flight == 0
    backend.gate.set()


def test_a_trailing_slash_is_a_json_404_not_a_redirect_to_the_clients_host(client: TestClient) -> None:
    answer = client.get("/health/", headers={"host": "evil.example"}, follow_redirects=False)
    assert answer.status_code == 404 and "location" not in answer.headers
    assert answer.headers["content-type"] == "application/json"


@pytest.mark.parametrize(("path", "key"), ROUTES[1:] + [("/invocations", "inputs")])
def test_tei_aliases_answer_as_their_contract(client: TestClient, path: str, key: str) -> None:
    """Issue 18: huggingface_hub's InferenceClient(model=url) POSTs to /, which was a 404; TEI also serves
    /invocations (SageMaker) as /embed and /embeddings as /v1/embeddings."""
    contract = "/v1/embeddings" if key == "input" else "/embed"
    same = client.post(contract, json={key: ["hello world", "hi"]}).json()
    answer = client.post(path, json={key: ["hello world", "hi"]})
    assert answer.status_code == 200 and answer.json() == same
    assert answer.headers["x-instance"] == "pool-0"
    refused = client.post(path, json={key: "a", "no_such_field": 1})
    assert refused.status_code == 422
    if key == "input":  # TEI answers its OpenAI alias in OpenAI's error shape
        assert refused.json()["error"]["type"] == "invalid_request_error"
    else:
        assert refused.json()["error_type"] == "Validation"


def test_aliases_count_under_their_contracts_route(minilm_folder: Path) -> None:
    service = fake_service(minilm_folder)
    with TestClient(build_app(service)) as client:
        for path, body in (("/", {"inputs": "a"}), ("/invocations", {"inputs": "a"}), ("/embeddings", {"input": "a"})):
            assert client.post(path, json=body).status_code == 200
    assert dict(service.metrics.requests) == {"/embed": 2, "/v1/embeddings": 1}


def test_ping_and_get_root_are_health(client: TestClient) -> None:
    for path in ("/ping", "/"):
        answer = client.get(path)
        assert answer.status_code == 200 and answer.json() == {"status": "ok", "instance": "pool-0"}


def test_ping_is_open_with_health_when_a_key_is_set(minilm_folder: Path) -> None:
    import hashlib

    digest = hashlib.sha256(b"key").hexdigest()
    app = build_app(fake_service(minilm_folder), api_key_sha256=digest, open_endpoints=("health",))
    with TestClient(app) as client:
        assert client.get("/ping").status_code == 200
        for method, path in (("GET", "/"), ("POST", "/"), ("POST", "/invocations"), ("POST", "/embeddings")):
            assert client.request(method, path, json={"inputs": "a"}).status_code == 401, (method, path)
        assert client.get("/v1/models").status_code == 401
    closed = build_app(fake_service(minilm_folder), api_key_sha256=digest, open_endpoints=())
    with TestClient(closed) as client:
        assert client.get("/ping").status_code == 401


def test_models_list_and_retrieve_in_openai_shape(client: TestClient) -> None:
    """Issue 18: GET /v1/models was missing, so openai's client.models.list() and front ends' checks failed."""
    from openai.types import Model

    listed = client.get("/v1/models")
    assert listed.status_code == 200
    body = listed.json()
    assert body["object"] == "list" and [item["id"] for item in body["data"]] == ["all-MiniLM-L6-v2"]
    model = Model.model_validate(body["data"][0])
    assert model.object == "model" and model.owned_by == "mig-orchestrator"
    assert client.get("/v1/models/all-MiniLM-L6-v2").json() == body["data"][0]
    missing = client.get("/v1/models/text-embedding-3-small")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    assert "not served here" in missing.json()["error"]["message"]
