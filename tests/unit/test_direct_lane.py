"""The direct lane without Ray: real TCP connections between ``DirectForwarder`` and ``LaneServer`` instances that
serve a small ASGI app; the registry is a list the test edits (the hub in production)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from orchestrator.balancer import Weights
from orchestrator.contracts.errors import InstanceLost, NoInstance
from orchestrator.contracts.forwarding import ForwardedRequest, ForwardedResponse
from orchestrator.contracts.lane_protocol import (
    CANCEL,
    HELLO,
    MAX_HELLO_META_BYTES,
    MAX_META_BYTES,
    PING,
    REQUEST,
    Frame,
    FrameRejected,
    LaneProtocolError,
    encode,
    read_frame,
    request_frame,
    request_from,
    response_frame,
    response_from,
)
from orchestrator.frontdoor.lanes import DirectForwarder, Heartbeat, LaneEndpoint
from orchestrator.serving.metrics_hub import MetricsHub
from workers.lane_server import LaneServer

TOKEN = "lane-secret"


class LaneApp:
    """An ASGI app answering ``/echo`` (its body, and which instance answered), ``/slow`` (after ``release`` is set),
    ``/hang`` (never: records its cancellation) and ``/boom`` (raises)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = (await receive())["body"]
        path = scope["path"]
        if path == "/boom":
            raise RuntimeError("bug in the handler")
        self.started.set()
        if path == "/slow":
            await self.release.wait()
        if path == "/hang":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        headers = [(b"x-instance", self.name.encode()), (b"x-query", scope["query_string"])]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class Replica:
    """A lane server with its app, as one replica would run them."""

    def __init__(self, name: str, token: str = TOKEN, load: float = 0.0, **server_options: Any) -> None:
        self.app = LaneApp(name)
        self.load = load
        self.server = LaneServer(self.app, token, name, lambda: (self.load, 0), **server_options)
        self.endpoint: LaneEndpoint | None = None

    async def start(self, incarnation: str = "1") -> LaneEndpoint:
        host, port = await self.server.start("127.0.0.1")
        self.endpoint = LaneEndpoint(self.app.name, host, port, incarnation)
        return self.endpoint


class Registry:
    """The endpoints the forwarder discovers."""

    def __init__(self) -> None:
        self.endpoints: list[LaneEndpoint] = []
        self.reads = 0

    async def __call__(self) -> list[LaneEndpoint]:
        self.reads += 1
        return list(self.endpoints)


def request(path: str = "/echo", body: bytes = b"hello", query: bytes = b"") -> ForwardedRequest:
    return ForwardedRequest("POST", path, query, ((b"content-type", b"text/plain"),), body)


@pytest.fixture
async def two_replicas() -> AsyncIterator[tuple[DirectForwarder, Replica, Replica, Registry]]:
    a, b = Replica("pool-a"), Replica("pool-b")
    registry = Registry()
    registry.endpoints = [await a.start(), await b.start()]
    forwarder = DirectForwarder({"pool-a": 4, "pool-b": 4}, TOKEN, registry, Weights(0.0, 1.0), poll_s=0.02)
    await forwarder.start(wait_s=5)
    yield forwarder, a, b, registry
    await forwarder.aclose()
    await a.server.close()
    await b.server.close()


async def until(condition: Any, timeout_s: float = 5.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout_s)


# ---- the wire format ------------------------------------------------------------------------------------------


async def test_frames_carry_requests_and_answers_whole() -> None:
    reader = asyncio.StreamReader()
    original = ForwardedRequest("GET", "/v1/x", b"a=1&b=\xe9", ((b"x-k", b"v\xe9"),), b"\x00\x01body")
    answer = ForwardedResponse(503, ((b"retry-after", b"1"),), b'{"error":"x"}')
    reader.feed_data(encode(request_frame(7, original)) + encode(response_frame(7, answer, 0.25, 12)))
    reader.feed_eof()
    first, second = await read_frame(reader), await read_frame(reader)
    assert first is not None and second is not None
    assert first.request_id == 7 and request_from(first) == original
    assert response_from(second) == answer and second.meta["load"] == 0.25 and second.meta["queued_texts"] == 12
    assert await read_frame(reader) is None  # a clean end between frames


async def test_a_bad_frame_is_read_past_and_the_stream_stays_in_step() -> None:
    reader = asyncio.StreamReader()
    after = encode(Frame(3, CANCEL, {}))
    reader.feed_data(struct.pack("!IBII", 1, 99, 2, 0) + b"{}" + after)  # an unknown kind
    with pytest.raises(FrameRejected, match=r"frame refused \(kind 99") as rejected:
        await read_frame(reader)
    assert rejected.value.request_id == 1 and rejected.value.too_large is None
    assert await read_frame(reader) == Frame(3, CANCEL, {})
    reader = asyncio.StreamReader()
    reader.feed_data(struct.pack("!IBII", 2, REQUEST, MAX_META_BYTES + 1, 0) + b"x" * (MAX_META_BYTES + 1) + after)
    with pytest.raises(FrameRejected) as rejected:
        await read_frame(reader)
    assert (rejected.value.request_id, rejected.value.too_large) == (2, "meta")
    assert await read_frame(reader) == Frame(3, CANCEL, {})
    reader = asyncio.StreamReader()
    reader.feed_data(struct.pack("!IBII", 4, HELLO, 3, 0) + b"[1]" + after)
    with pytest.raises(FrameRejected, match="not a JSON object"):
        await read_frame(reader)
    assert await read_frame(reader) == Frame(3, CANCEL, {})
    truncated = asyncio.StreamReader()
    truncated.feed_data(encode(Frame(1, HELLO, {"token": "x"}))[:-2])
    truncated.feed_eof()
    with pytest.raises(asyncio.IncompleteReadError):
        await read_frame(truncated)
    with pytest.raises(LaneProtocolError, match="incomplete request"):
        request_from(Frame(1, HELLO, {"path": "/x"}))


async def test_a_greeting_is_small_or_refused_before_its_bytes_are_read() -> None:
    for header in (
        struct.pack("!IBII", 0, HELLO, 1 << 30, 0),  # the attack: a 1 GiB first frame, before any token
        struct.pack("!IBII", 0, HELLO, MAX_HELLO_META_BYTES + 1, 0),
        struct.pack("!IBII", 0, HELLO, 10, 5),
        struct.pack("!IBII", 0, REQUEST, 10, 0),
    ):
        reader = asyncio.StreamReader()
        reader.feed_data(header + b"y" * 100)
        with pytest.raises(LaneProtocolError, match="bad greeting"):
            await read_frame(reader, greeting=True)
        assert len(await reader.read(1000)) == 100  # nothing past the header was read


def test_the_sender_refuses_a_frame_the_peer_would_refuse() -> None:
    heavy = ForwardedRequest("POST", "/v1/embeddings", b"", ((b"x-junk", b'"' * (MAX_META_BYTES // 2 + 10)),), b"")
    with pytest.raises(FrameRejected, match="too large for the lane") as rejected:
        encode(request_frame(9, heavy))  # each quote is two bytes once JSON-escaped
    assert (rejected.value.request_id, rejected.value.too_large) == (9, "meta")


# ---- forwarding over lanes ------------------------------------------------------------------------------------


async def test_requests_cross_the_lane_and_answers_match_their_requests(two_replicas: Any) -> None:
    forwarder, a, b, _ = two_replicas
    assert forwarder.readiness() == (2, 2)
    slow = asyncio.ensure_future(forwarder(request("/slow", b"slow one")))
    await until(lambda: a.app.started.is_set() or b.app.started.is_set())
    # The slow request holds one instance; later requests still get their own answers, whichever lane they take.
    answers = await asyncio.gather(*(forwarder(request(body=f"text {n}".encode(), query=b"n=1")) for n in range(6)))
    assert [answer.body for answer in answers] == [f"text {n}".encode() for n in range(6)]
    assert all((b"x-query", b"n=1") in answer.headers for answer in answers)
    a.app.release.set()
    b.app.release.set()
    assert (await slow).body == b"slow one"


async def test_the_balancer_sends_work_to_the_instance_with_less_outstanding(two_replicas: Any) -> None:
    forwarder, a, b, _ = two_replicas
    held = [asyncio.ensure_future(forwarder(request("/slow"))) for _ in range(3)]
    await until(lambda: a.app.started.is_set() and b.app.started.is_set())
    # 3 outstanding over 2 equal instances: 2 on one, 1 on the other; the next goes to the one with 1.
    busier = forwarder._outstanding["pool-a"] > forwarder._outstanding["pool-b"]
    answer = await forwarder(request())
    assert dict(answer.headers)[b"x-instance"] == (b"pool-b" if busier else b"pool-a")
    a.app.release.set()
    b.app.release.set()
    await asyncio.gather(*held)


async def test_a_front_door_prefers_its_own_nodes_instance_until_it_is_busier() -> None:
    """A node's front door (``serving/node_front_doors.py``) sends to its own node's instance while it is no busier
    than the others: no hop between machines for that request."""
    a, b = Replica("pool-a"), Replica("pool-b")
    registry = Registry()
    registry.endpoints = [await a.start(), await b.start()]
    forwarder = DirectForwarder(
        {"pool-a": 4, "pool-b": 4}, TOKEN, registry, Weights(0.0, 1.0), poll_s=0.02, prefer=frozenset({"pool-b"})
    )
    await forwarder.start(wait_s=5)
    try:
        for _ in range(3):  # idle and equal: always the preferred one
            assert dict((await forwarder(request())).headers)[b"x-instance"] == b"pool-b"
        held = asyncio.ensure_future(forwarder(request("/slow")))
        await until(lambda: b.app.started.is_set())
        # pool-b holds one request: busier, so the next one goes to the other node's instance.
        assert dict((await forwarder(request())).headers)[b"x-instance"] == b"pool-a"
        b.app.release.set()
        await held
    finally:
        await forwarder.aclose()
        await a.server.close()
        await b.server.close()


async def test_reported_load_steers_requests_and_fades_when_nothing_runs() -> None:
    a, b = Replica("pool-a", load=0.9), Replica("pool-b", load=0.1)
    registry = Registry()
    registry.endpoints = [await a.start(), await b.start()]
    now = [100.0]
    forwarder = DirectForwarder({"pool-a": 4, "pool-b": 4}, TOKEN, registry, Weights(1.0, 0.0), clock=lambda: now[0])
    await forwarder.start(wait_s=5)
    try:
        forwarder._reported = {"pool-a": (0.9, 100.0), "pool-b": (0.1, 100.0)}
        assert dict((await forwarder(request())).headers)[b"x-instance"] == b"pool-b"
        # pool-a's 0.9 was measured over the last 2 s; with nothing of ours running there it fades to 0 in 2 s.
        now[0] = 101.5
        assert forwarder._instance_load("pool-a", now[0]).load == pytest.approx(0.9 * 0.25)
        now[0] = 103.0
        assert forwarder._instance_load("pool-a", now[0]).load == 0.0
    finally:
        await forwarder.aclose()
        await a.server.close()
        await b.server.close()


async def test_a_reported_load_fades_over_the_window_the_replica_announced_at_greeting() -> None:
    """The window is the replica's (its batcher's ``load_window_s``), said in its HELLO: not a copy of the default."""
    quick = Replica("pool-a", load=0.8, load_window_s=0.5)
    registry = Registry()
    registry.endpoints = [await quick.start()]
    now = [100.0]
    forwarder = DirectForwarder({"pool-a": 4}, TOKEN, registry, Weights(1.0, 0.0), clock=lambda: now[0])
    await forwarder.start(wait_s=5)
    try:
        forwarder._reported = {"pool-a": (0.8, 100.0)}
        now[0] = 100.25  # half of the announced 0.5 s window: half the load is left (the default window: 7/8)
        assert forwarder._instance_load("pool-a", now[0]).load == pytest.approx(0.4)
        now[0] = 100.5
        assert forwarder._instance_load("pool-a", now[0]).load == 0.0
    finally:
        await forwarder.aclose()
        await quick.server.close()


async def test_a_lost_replica_fails_its_requests_as_lost_and_its_successor_is_connected(two_replicas: Any) -> None:
    forwarder, a, b, registry = two_replicas
    hanging = asyncio.ensure_future(forwarder(request("/hang")))
    await until(lambda: a.app.started.is_set() or b.app.started.is_set())
    victim, survivor = (a, b) if a.app.started.is_set() else (b, a)
    await victim.server.close()  # the replica process dies: its connections close
    with pytest.raises(InstanceLost):
        await hanging
    await until(lambda: forwarder.readiness() == (1, 2))
    answer = await forwarder(request())  # only the survivor takes requests now
    assert dict(answer.headers)[b"x-instance"] == survivor.app.name.encode()
    # Serve starts a successor for the same instance; it registers a new endpoint and the lane reconnects.
    successor = Replica(victim.app.name)
    registry.endpoints = [await successor.start("2"), survivor.endpoint]
    await until(lambda: forwarder.readiness() == (2, 2))
    await successor.server.close()


async def test_the_registry_is_read_often_only_while_a_lane_is_missing() -> None:
    a, b = Replica("pool-a"), Replica("pool-b")
    registry = Registry()
    registry.endpoints = [await a.start()]
    forwarder = DirectForwarder({"pool-a": 1, "pool-b": 1}, TOKEN, registry, poll_s=0.01, settled_poll_s=60.0)
    await forwarder.start(wait_s=0.2)  # pool-b has not registered: the watcher keeps reading
    try:
        assert registry.reads >= 5
        registry.endpoints.append(await b.start())
        await until(lambda: forwarder.readiness() == (2, 2))
        settled_reads = registry.reads
        await asyncio.sleep(0.2)
        assert registry.reads == settled_reads  # every lane open: no read for settled_poll_s
        await a.server.close()  # a lane breaking wakes the watcher at once, and it reads often again
        await until(lambda: registry.reads >= settled_reads + 3)
        assert forwarder.readiness() == (1, 2)
    finally:
        await forwarder.aclose()
        await b.server.close()


async def test_a_cancelled_call_cancels_the_request_in_the_replica(two_replicas: Any) -> None:
    forwarder, a, b, _ = two_replicas
    call = asyncio.ensure_future(forwarder(request("/hang")))
    await until(lambda: a.app.started.is_set() or b.app.started.is_set())
    replica = a if a.app.started.is_set() else b
    call.cancel()
    await until(replica.app.cancelled.is_set)
    assert forwarder.readiness() == (2, 2)  # the lane stays open for the others


async def test_an_exception_in_the_replica_app_is_a_json_500(two_replicas: Any) -> None:
    forwarder, *_ = two_replicas
    answer = await forwarder(request("/boom"))
    assert answer.status == 500
    assert orjson.loads(answer.body) == {
        "error": "internal error in the replica: RuntimeError",
        "error_type": "Internal",
    }
    assert (await forwarder(request())).status == 200  # the lane keeps serving


async def test_a_wrong_token_or_another_instance_is_never_connected() -> None:
    wrong_token = Replica("pool-a", token="another-secret")
    impostor = Replica("pool-c")
    registry = Registry()
    endpoint = await impostor.start()
    registry.endpoints = [await wrong_token.start(), LaneEndpoint("pool-b", endpoint.host, endpoint.port, "1")]
    forwarder = DirectForwarder({"pool-a": 1, "pool-b": 1}, TOKEN, registry, poll_s=0.02)
    await forwarder.start(wait_s=0.3)
    try:
        assert forwarder.readiness() == (0, 2)
        with pytest.raises(NoInstance, match="0 of 2 instances connected"):
            await forwarder(request())
    finally:
        await forwarder.aclose()
        await wrong_token.server.close()
        await impostor.server.close()


async def test_the_replica_closes_a_lane_that_does_not_greet_with_the_token() -> None:
    replica = Replica("pool-a")
    endpoint = await replica.start()
    reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    writer.write(encode(request_frame(1, request())))  # no HELLO first
    assert await read_frame(reader) is None
    writer.close()
    reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    writer.write(encode(Frame(0, HELLO, {"token": TOKEN})) + encode(Frame(5, CANCEL, {})))  # unknown id: ignored
    hello = await read_frame(reader)
    assert hello is not None and hello.meta == {"instance": "pool-a", "load_window_s": 2.0}
    writer.write(encode(request_frame(6, request(body=b"after"))))
    answer = await read_frame(reader)
    assert answer is not None and answer.request_id == 6 and answer.body == b"after"
    writer.close()
    await replica.server.close()


def test_the_hub_keeps_the_latest_lane_of_each_instance() -> None:
    hub = MetricsHub(clock=lambda: 10.0)
    snapshot = {"time": 1.0, "embeddings": 0, "tokens": 0, "started_at": 1.0}
    hub.push({"instance": "pool-a"}, snapshot, {"host": "127.0.0.1", "port": 4001, "incarnation": "old"})
    hub.push({"instance": "pool-b"}, snapshot)  # transport "serve": no lane
    hub.push(
        {"instance": "pool-a"},
        {**snapshot, "started_at": 2.0},
        {"host": "127.0.0.1", "port": 4002, "incarnation": "new"},
    )
    assert hub.lanes() == [{"instance": "pool-a", "host": "127.0.0.1", "port": 4002, "incarnation": "new"}]


async def test_the_front_door_resends_a_request_whose_replica_died_to_the_other_one(two_replicas: Any) -> None:
    from orchestrator.frontdoor.app import FrontDoor
    from tests.unit.test_front_door import _call

    forwarder, a, b, _ = two_replicas
    door = FrontDoor(max_request_bytes=1000, request_timeout_s=5)
    door.attach(forwarder, forwarder.readiness)
    call = asyncio.ensure_future(_call(door, "POST", "/slow", b"keep me"))
    await until(lambda: a.app.started.is_set() or b.app.started.is_set())
    victim, survivor = (a, b) if a.app.started.is_set() else (b, a)
    survivor.app.release.set()  # the survivor answers /slow at once; the victim dies holding the request
    await victim.server.close()
    status, headers, body = await call
    assert (status, body) == (200, b"keep me")
    assert headers[b"x-instance"] == survivor.app.name.encode()
    assert (door.stats.retried, door.stats.instance_losses) == (1, 1)
    status, _, _ = await _call(door, "GET", "/echo")
    assert status == 200 and forwarder.readiness() == (1, 2)


async def test_one_oversized_request_fails_alone_and_the_lanes_survive(two_replicas: Any) -> None:
    """The attack: ~540 KB of quotes in one header became over 1 MiB of frame meta; the replica dropped the whole
    lane and the front door's retry broke the other lane too. Now that request gets 431 and nothing breaks."""
    forwarder, a, b, _ = two_replicas
    quotes = ForwardedRequest("POST", "/v1/embeddings", b"", ((b"x-junk", b'"' * 540_000),), b"{}")
    answer = await forwarder(quotes)
    assert answer.status == 431 and orjson.loads(answer.body)["error"]["code"] == "HeadersTooLarge"
    assert forwarder.readiness() == (2, 2)
    answers = await asyncio.gather(*(forwarder(request(body=f"after {n}".encode())) for n in range(4)))
    assert [answer.body for answer in answers] == [f"after {n}".encode() for n in range(4)]


async def test_the_replica_answers_a_bad_frame_and_keeps_the_lane() -> None:
    """A peer past the greeting that sends a frame the replica cannot take gets an error for that request only."""
    replica = Replica("pool-a")
    endpoint = await replica.start()
    reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    try:
        writer.write(encode(Frame(0, HELLO, {"token": TOKEN})))
        assert (await read_frame(reader)) is not None
        oversized = struct.pack("!IBII", 7, REQUEST, MAX_META_BYTES + 1, 0) + b"m" * (MAX_META_BYTES + 1)
        not_json = struct.pack("!IBII", 8, REQUEST, 3, 0) + b"{{{"
        incomplete = encode(Frame(9, REQUEST, {"path": "/echo"}))  # no method
        writer.write(oversized + not_json + incomplete + encode(request_frame(10, request(body=b"still here"))))
        answers = {}
        for _ in range(4):
            frame = await read_frame(reader)
            assert frame is not None
            answers[frame.request_id] = response_from(frame)
        assert [answers[rid].status for rid in (7, 8, 9, 10)] == [431, 400, 400, 200]
        assert orjson.loads(answers[7].body)["error_type"] == "HeadersTooLarge"
        assert answers[10].body == b"still here"
    finally:
        writer.close()
        await replica.server.close()


async def test_lane_connections_per_replica_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import workers.lane_server

    monkeypatch.setattr(workers.lane_server, "MAX_CONNECTIONS", 2)
    replica = Replica("pool-a")
    endpoint = await replica.start()
    held = [await asyncio.open_connection(endpoint.host, endpoint.port) for _ in range(2)]
    try:
        await until(lambda: len(replica.server._connections) == 2)
        reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
        writer.write(encode(Frame(0, HELLO, {"token": TOKEN})))
        # Closed unread (with our greeting still in its buffer, the kernel may answer with a reset instead).
        with contextlib.suppress(ConnectionResetError):
            assert await read_frame(reader) is None
        writer.close()
        held.pop()[1].close()
        await until(lambda: len(replica.server._connections) == 1)
        reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
        writer.write(encode(Frame(0, HELLO, {"token": TOKEN})))
        hello = await read_frame(reader)
        assert hello is not None and hello.meta == {"instance": "pool-a", "load_window_s": 2.0}
        writer.close()
    finally:
        for _, held_writer in held:
            held_writer.close()
        await replica.server.close()


async def test_a_frozen_replica_is_taken_out_and_its_requests_are_resent() -> None:
    """A replica stopped with SIGSTOP looks like this from the front door: connected, greeted once, then silent
    (the kernel still accepts bytes for it). Without a heartbeat its requests waited until the deadline and
    ``/health`` kept counting it."""
    frozen_frames: list[Frame] = []

    async def frozen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = await read_frame(reader, greeting=True)
        assert hello is not None
        writer.write(encode(Frame(0, HELLO, {"instance": "pool-b"})))
        while (frame := await read_frame(reader)) is not None:
            frozen_frames.append(frame)  # read, never answered

    live = Replica("pool-a")
    server = await asyncio.start_server(frozen, "127.0.0.1", 0)
    registry = Registry()
    registry.endpoints = [
        await live.start(),
        LaneEndpoint("pool-b", "127.0.0.1", server.sockets[0].getsockname()[1], "1"),
    ]
    forwarder = DirectForwarder(
        {"pool-a": 4, "pool-b": 4},
        TOKEN,
        registry,
        Weights(0.0, 1.0),
        poll_s=0.05,
        heartbeat=Heartbeat(period_s=0.05, silence_s=0.3),
    )
    await forwarder.start(wait_s=5)
    try:
        assert forwarder.readiness() == (2, 2)
        calls = [asyncio.ensure_future(forwarder(request(body=f"n{n}".encode()))) for n in range(4)]
        outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
        lost = [outcome for outcome in outcomes if isinstance(outcome, InstanceLost)]
        assert lost and "pool-b stopped answering" in str(lost[0])  # the front door resends these elsewhere
        assert all(outcome.body.startswith(b"n") for outcome in outcomes if isinstance(outcome, ForwardedResponse))
        assert forwarder.readiness() == (1, 2)
        assert any(frame.kind == PING for frame in frozen_frames)
        assert (await forwarder(request(body=b"after"))).body == b"after"  # served by the live one
    finally:
        await forwarder.aclose()
        await live.server.close()
        server.close()


async def test_a_busy_replica_keeps_answering_pings() -> None:
    replica = Replica("pool-a")
    registry = Registry()
    registry.endpoints = [await replica.start()]
    forwarder = DirectForwarder({"pool-a": 4}, TOKEN, registry, heartbeat=Heartbeat(period_s=0.05, silence_s=0.3))
    await forwarder.start(wait_s=5)
    try:
        slow = asyncio.ensure_future(forwarder(request("/slow", b"long")))
        await asyncio.sleep(1.0)  # three times the silence: the pongs keep the lane
        assert forwarder.readiness() == (1, 1) and not slow.done()
        replica.app.release.set()
        assert (await slow).body == b"long"
    finally:
        await forwarder.aclose()
        await replica.server.close()
