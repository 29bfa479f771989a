"""The front door without Ray: forwarding, retry on a lost instance, JSON for every failure, deadline, disconnect,
readiness on /health and its own series on /metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.contracts.errors import InstanceLost, NoInstance
from orchestrator.contracts.forwarding import ForwardedRequest, ForwardedResponse
from orchestrator.frontdoor.app import FrontDoor
from tests.fakes import fake_service
from workers.asgi_bridge import call_asgi
from workers.http_api import build_app

OK = ForwardedResponse(200, ((b"content-type", b"application/json"), (b"x-instance", b"pool-a")), b'{"status":"ok"}')


class ScriptedForwarder:
    """Plays one outcome per call: a response, an exception to raise, or "hang" (never answers)."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.requests: list[ForwardedRequest] = []
        self.cancelled = 0

    async def __call__(self, request: ForwardedRequest) -> ForwardedResponse:
        self.requests.append(request)
        outcome = self.outcomes.pop(0)
        if outcome == "hang":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


async def _call(
    door: FrontDoor,
    method: str = "GET",
    path: str = "/health",
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    chunks: list[bytes] | None = None,
    disconnect_after_s: float | None = None,
) -> tuple[int | None, dict[bytes, bytes], bytes]:
    """Drive the ASGI app like a server would; returns (status or None if nothing was sent, headers, body)."""
    parts = chunks if chunks is not None else [body]
    messages = [{"type": "http.request", "body": part, "more_body": n < len(parts) - 1} for n, part in enumerate(parts)]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        if disconnect_after_s is None:
            await asyncio.Event().wait()
        await asyncio.sleep(disconnect_after_s)
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "query_string": b"", "headers": headers or []}
    await door(scope, receive, send)
    if not sent:
        return None, {}, b""
    return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def test_forwards_the_request_whole_and_returns_the_answer() -> None:
    forwarder = ScriptedForwarder(OK)
    door = FrontDoor(max_request_bytes=100, request_timeout_s=5)
    door.attach(forwarder)
    status, headers, body = asyncio.run(
        _call(door, "POST", "/embed", headers=[(b"authorization", b"Bearer k")], chunks=[b'{"inputs":', b'"hi"}'])
    )
    assert (status, body, headers[b"x-instance"], headers[b"content-length"]) == (200, OK.body, b"pool-a", b"15")
    (request,) = forwarder.requests
    assert (request.method, request.path, request.body) == ("POST", "/embed", b'{"inputs":"hi"}')
    assert (b"authorization", b"Bearer k") in request.headers


def test_a_lost_instance_is_retried_once_and_the_client_sees_no_failure() -> None:
    forwarder = ScriptedForwarder(InstanceLost("actor died"), OK)
    door = FrontDoor(max_request_bytes=100, request_timeout_s=5)
    door.attach(forwarder)
    status, _, body = asyncio.run(_call(door, "POST", "/embed", b"{}"))
    assert (status, body) == (200, OK.body)
    assert len(forwarder.requests) == 2 and forwarder.requests[0] == forwarder.requests[1]
    assert (door.stats.instance_losses, door.stats.retried) == (1, 1)


@pytest.mark.parametrize(
    ("path", "message_of"),
    [("/embed", lambda body: body["error"]), ("/v1/embeddings", lambda body: body["error"]["message"])],
)
def test_losing_the_instance_twice_is_a_json_503_with_retry_after(path: str, message_of: Any) -> None:
    door = FrontDoor(max_request_bytes=100, request_timeout_s=5)
    door.attach(ScriptedForwarder(InstanceLost("died"), InstanceLost("died again")))
    status, headers, body = asyncio.run(_call(door, "POST", path, b"{}"))
    assert (status, headers[b"retry-after"], headers[b"content-type"]) == (503, b"1", b"application/json")
    assert "lost 2 times" in message_of(orjson.loads(body))
    assert (door.stats.instance_losses, door.stats.retried, door.stats.failed_unavailable) == (2, 1, 1)


def test_no_instance_and_not_yet_started_are_503_without_retry() -> None:
    door = FrontDoor(max_request_bytes=100, request_timeout_s=5)
    status, _, body = asyncio.run(_call(door))
    assert status == 503 and "starting" in orjson.loads(body)["error"]
    forwarder = ScriptedForwarder(NoInstance("0 of 2 running"))
    door.attach(forwarder)
    status, _, body = asyncio.run(_call(door))
    assert status == 503 and "0 of 2 running" in orjson.loads(body)["error"] and len(forwarder.requests) == 1


def test_oversized_bodies_are_refused_before_forwarding() -> None:
    forwarder = ScriptedForwarder()
    door = FrontDoor(max_request_bytes=10, request_timeout_s=5)
    door.attach(forwarder)
    declared = asyncio.run(_call(door, "POST", "/embed", b"x" * 11, headers=[(b"content-length", b"11")]))
    streamed = asyncio.run(_call(door, "POST", "/v1/embeddings", chunks=[b"x" * 6, b"x" * 6]))
    assert declared[0] == streamed[0] == 413
    assert orjson.loads(streamed[2])["error"]["type"] == "invalid_request_error"
    assert forwarder.requests == []


def test_an_instance_that_never_answers_gets_504_and_its_call_is_cancelled() -> None:
    forwarder = ScriptedForwarder("hang")
    door = FrontDoor(max_request_bytes=100, request_timeout_s=0.05, deadline_grace_s=0.05)
    door.attach(forwarder)
    status, _, body = asyncio.run(_call(door, "POST", "/embed", b"{}"))
    assert status == 504 and orjson.loads(body)["error_type"] == "Timeout"
    assert forwarder.cancelled == 1 and door.stats.timed_out == 1


def test_a_client_that_disconnects_cancels_its_request() -> None:
    forwarder = ScriptedForwarder("hang")
    door = FrontDoor(max_request_bytes=100, request_timeout_s=30)
    door.attach(forwarder)
    status, _, _ = asyncio.run(_call(door, "POST", "/embed", b"{}", disconnect_after_s=0.05))
    assert status is None and forwarder.cancelled == 1 and door.stats.cancelled == 1


def test_health_reports_readiness_and_degrades_while_instances_are_down() -> None:
    ready = [2]
    door = FrontDoor(max_request_bytes=100, request_timeout_s=5, readiness=lambda: (ready[0], 2))
    door.attach(ScriptedForwarder(OK, OK))
    status, _, body = asyncio.run(_call(door))
    assert status == 200 and orjson.loads(body) == {"status": "ok", "instances_ready": 2, "instances_planned": 2}
    ready[0] = 1
    status, _, body = asyncio.run(_call(door))
    assert status == 200 and orjson.loads(body)["status"] == "degraded"


def test_health_answers_503_once_the_control_plane_is_lost() -> None:
    problem: list[str | None] = [None]
    door = FrontDoor(max_request_bytes=100, request_timeout_s=5, readiness=lambda: (2, 2))
    door.attach(ScriptedForwarder(OK, OK, NoInstance("gone")))
    door.watch_control_plane(lambda: problem[0])
    status, _, body = asyncio.run(_call(door))
    assert status == 200 and orjson.loads(body)["control_plane"] == "ok"
    problem[0] = "Ray's raylet exited"
    status, _, body = asyncio.run(_call(door))
    payload = orjson.loads(body)
    assert status == 503 and payload["status"] == "unavailable"
    assert payload["control_plane"] == "lost: Ray's raylet exited" and payload["instances_ready"] == 2
    status, _, body = asyncio.run(_call(door))  # no replica answers at all: still the reason, still JSON
    assert status == 503 and orjson.loads(body)["control_plane"] == "lost: Ray's raylet exited"


def test_a_request_cut_by_the_end_of_the_shutdown_grace_gets_json_and_its_call_is_cancelled() -> None:
    forwarder = ScriptedForwarder("hang")
    door = FrontDoor(max_request_bytes=100, request_timeout_s=60)
    door.attach(forwarder)

    async def cut_short() -> tuple[int | None, dict[bytes, bytes], bytes]:
        call = asyncio.ensure_future(_call(door, "POST", "/v1/embeddings", b"{}"))
        while not forwarder.requests:
            await asyncio.sleep(0.01)
        call.cancel()  # what uvicorn does to every task still running when timeout_graceful_shutdown is over
        return await call

    status, headers, body = asyncio.run(cut_short())
    assert status == 503 and headers[b"content-type"] == b"application/json"
    assert orjson.loads(body)["error"]["message"] == "the service stopped before answering: retry"
    assert forwarder.cancelled == 1


def test_metrics_gain_the_front_doors_series_in_valid_prometheus_text() -> None:
    metrics = ForwardedResponse(
        200, ((b"content-type", b"text/plain"),), b"# TYPE replica_thing gauge\nreplica_thing 1.0\n"
    )
    door = FrontDoor(max_request_bytes=100, request_timeout_s=5, readiness=lambda: (1, 2))
    door.attach(ScriptedForwarder(InstanceLost("died"), metrics))
    status, _, body = asyncio.run(_call(door, path="/metrics"))
    families = {family.name: family for family in text_string_to_metric_families(body.decode())}
    assert status == 200 and "replica_thing" in families
    assert families["orchestrator_front_door_retries"].samples[0].value == 1.0
    assert families["orchestrator_instances_ready"].samples[0].value == 1.0


def test_through_a_real_instance_app(minilm_folder: Path) -> None:
    """Front door -> the replica's own FastAPI app through the ASGI bridge, as a replica's ``forward`` runs it."""
    app = build_app(fake_service(minilm_folder))
    door = FrontDoor(max_request_bytes=2000, request_timeout_s=5)
    door.attach(lambda request: call_asgi(app, request))
    status, headers, body = asyncio.run(_call(door, "POST", "/embed", b'{"inputs": ["a", "b c"]}'))
    assert status == 200 and headers[b"x-instance"] == b"pool-0"
    assert len(orjson.loads(body)) == 2
    status, _, body = asyncio.run(_call(door, "POST", "/v1/embeddings", b'{"input": 3'))
    assert status == 400 and orjson.loads(body)["error"]["type"] == "invalid_request_error"


def test_the_server_answers_json_while_starting_and_sets_tcp_nodelay() -> None:
    """Over real HTTP: 503 "starting" before any replica is attached, on a keep-alive connection; the listening
    socket declares TCP, which is what makes asyncio set TCP_NODELAY on every accepted connection (without it,
    answers written as headers then body wait for the client's delayed ACK, about 40 ms each)."""
    import socket

    import httpx

    from orchestrator.frontdoor.server import FrontDoorServer

    server = FrontDoorServer(FrontDoor(max_request_bytes=100, request_timeout_s=5), "127.0.0.1", 0)
    server.start()
    try:
        sock = server.listening_socket
        assert sock is not None and sock.proto == socket.IPPROTO_TCP
        port = sock.getsockname()[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            answers = [client.get("/health") for _ in range(2)]  # the same connection twice
        assert [answer.status_code for answer in answers] == [503, 503]
        assert answers[0].json()["error_type"] == "Unavailable" and answers[0].headers["retry-after"] == "1"
    finally:
        server.stop()


def test_an_unexpected_forwarding_failure_is_a_json_500_and_the_door_keeps_serving() -> None:
    forwarder = ScriptedForwarder(RuntimeError("serialisation broke"), OK)
    door = FrontDoor(max_request_bytes=100, request_timeout_s=5)
    door.attach(forwarder)
    status, headers, body = asyncio.run(_call(door, "POST", "/v1/embeddings", b"{}"))
    assert (status, headers[b"content-type"]) == (500, b"application/json")
    assert orjson.loads(body)["error"]["type"] == "server_error" and door.stats.failed_internal == 1
    assert asyncio.run(_call(door))[0] == 200


def test_instances_gain_the_front_doors_retries_and_readiness() -> None:
    """The dashboard reads /instances: retries appear nowhere else, and readiness drops the moment a lane breaks."""
    view = ForwardedResponse(
        200, ((b"content-type", b"application/json"),), orjson.dumps({"error_rates": {"requests": 4}})
    )
    ready = [2]
    door = FrontDoor(max_request_bytes=100, request_timeout_s=5, readiness=lambda: (ready[0], 2))
    door.attach(ScriptedForwarder(InstanceLost("killed"), view, view))
    status, headers, body = asyncio.run(_call(door, path="/instances"))
    payload = orjson.loads(body)
    assert status == 200 and payload["error_rates"] == {"requests": 4}
    assert payload["front_door"]["retries"] == 1 and payload["front_door"]["instance_losses"] == 1
    assert (payload["instances_ready"], payload["instances_planned"]) == (2, 2)
    ready[0] = 1
    _, _, body = asyncio.run(_call(door, path="/instances"))
    assert orjson.loads(body)["instances_ready"] == 1
