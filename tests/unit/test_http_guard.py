"""The front door's HTTP edge over real sockets (no Ray): header size and time, slow bodies, the connection cap,
malformed HTTP and upgrade requests all get a JSON answer and a closed connection, and the door keeps serving."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import orjson
import pytest

from orchestrator.contracts.forwarding import ForwardedRequest, ForwardedResponse
from orchestrator.frontdoor.app import FrontDoor
from orchestrator.frontdoor.edge import EdgeLimits, RateLimitedLog
from orchestrator.frontdoor.server import FrontDoorServer


class EchoForwarder:
    """Answers 200 with the number of header bytes it received; remembers every request."""

    def __init__(self) -> None:
        self.requests: list[ForwardedRequest] = []

    async def __call__(self, request: ForwardedRequest) -> ForwardedResponse:
        self.requests.append(request)
        size = sum(len(name) + len(value) for name, value in request.headers)
        body = orjson.dumps({"header_bytes": size, "body_bytes": len(request.body)})
        return ForwardedResponse(200, ((b"content-type", b"application/json"),), body)


@pytest.fixture
def door(request: pytest.FixtureRequest) -> Iterator[tuple[int, EchoForwarder]]:
    limits = getattr(request, "param", EdgeLimits(max_header_bytes=2048, client_timeout_s=0.5, max_connections=64))
    forwarder = EchoForwarder()
    front_door = FrontDoor(max_request_bytes=10_000, request_timeout_s=5, client_timeout_s=limits.client_timeout_s)
    front_door.attach(forwarder)
    server = FrontDoorServer(front_door, "127.0.0.1", 0, limits, shutdown_grace_s=1.0)
    server.start()
    assert server.listening_socket is not None
    try:
        yield server.listening_socket.getsockname()[1], forwarder
    finally:
        server.stop()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, object], bool]:
    """(status, headers, JSON body, whether the server then closed the connection) of one answer."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed without an answer: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    while len(rest) < int(headers["content-length"]):
        rest += sock.recv(65536)
    body = orjson.loads(rest[: int(headers["content-length"])])
    sock.settimeout(3)
    try:
        closed = sock.recv(1) == b""
    except ConnectionResetError:
        closed = True
    except TimeoutError:
        closed = False
    return int(status_line.split()[1]), headers, body, closed


def request_bytes(path: str = "/v1/embeddings", extra_headers: str = "", body: bytes = b'{"input":"hi"}') -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + extra_headers + "\r\n").encode() + body


def assert_still_serving(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(request_bytes())
        status, _, body, _ = read_answer_keeping(sock)
    assert status == 200 and body["body_bytes"] == 14


def test_headers_over_the_limit_get_431_json_as_soon_as_the_limit_is_crossed(door: tuple[int, EchoForwarder]) -> None:
    port, forwarder = door
    with connect(port) as sock:
        # The attack's shape: one header of quotes, which JSON escaping would double on the way to a replica.
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nX-Junk: " + b'"' * 4000)
        status, headers, body, closed = read_answer(sock)  # answered before the header line even ends
    assert status == 431 and closed and headers["connection"] == "close"
    assert body["error"]["code"] == "HeadersTooLarge" and "over 2048 bytes" in body["error"]["message"]
    with connect(port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Many: y\r\n" * 400 + b"\r\n")
        status, _, body, closed = read_answer(sock)
    assert status == 431 and closed and body["error_type"] == "HeadersTooLarge"  # TEI's shape off /v1/
    assert forwarder.requests == []  # nothing of it reached a replica
    assert_still_serving(port)


def test_a_flood_of_header_bytes_is_answered_early_and_cut_off(door: tuple[int, EchoForwarder]) -> None:
    port, _ = door
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * (1 << 20))
        status, _, body, _ = read_answer_keeping(sock)  # 431 while the flood is still coming
        assert status == 431 and body["error_type"] == "HeadersTooLarge"
        # The server reads and drops what follows for a moment (so that the answer is not lost to a reset), then
        # closes: a client that keeps flooding is cut off.
        deadline = time.monotonic() + 10
        with pytest.raises(OSError):
            while time.monotonic() < deadline:
                sock.sendall(b"a" * 65536)
    assert_still_serving(port)


def test_headers_that_never_finish_get_408_after_the_client_timeout(door: tuple[int, EchoForwarder]) -> None:
    port, forwarder = door
    with connect(port) as slow, connect(port) as silent:
        slow.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")  # ... and nothing more (slowloris)
        status, _, body, closed = read_answer(slow)
        assert status == 408 and closed and body["error"]["code"] == "ClientTimeout"
        status, _, body, closed = read_answer(silent)  # connected, never sent a byte
        assert status == 408 and closed and "did not arrive within 0.5 s" in body["error"]
    assert forwarder.requests == []
    assert_still_serving(port)


def test_a_body_that_stalls_gets_408_and_the_connection_is_closed(door: tuple[int, EchoForwarder]) -> None:
    port, forwarder = door
    with connect(port) as sock:
        sock.sendall(request_bytes(body=b'{"input":"hi"}')[:-6])  # the last 6 bytes never come
        status, headers, body, closed = read_answer(sock)
    assert status == 408 and closed and headers["connection"] == "close"
    assert "body stalled for 0.5 s" in body["error"]["message"]
    assert forwarder.requests == []


def test_keep_alive_requests_are_not_cut_by_the_header_timer(door: tuple[int, EchoForwarder]) -> None:
    port, forwarder = door
    with connect(port) as sock:
        for _ in range(3):
            sock.sendall(request_bytes())
            status, _, _, _ = read_answer_keeping(sock)
            assert status == 200
            time.sleep(0.3)  # under the timeout each time, over it in total
    assert len(forwarder.requests) == 3


def read_answer_keeping(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, object], bool]:
    """``read_answer`` without probing for a close (the connection is reused)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    while len(rest) < int(headers["content-length"]):
        rest += sock.recv(65536)
    return int(status_line.split()[1]), headers, orjson.loads(rest), False


def test_malformed_http_and_upgrade_requests_get_json(door: tuple[int, EchoForwarder]) -> None:
    port, forwarder = door
    with connect(port) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n")  # a TLS hello
        status, _, body, closed = read_answer(sock)
    assert status == 400 and closed and body["error_type"] == "MalformedHttp"
    with connect(port) as sock:
        upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZQ==\r\n"
        sock.sendall(f"GET /health HTTP/1.1\r\nHost: x\r\n{upgrade}Sec-WebSocket-Version: 13\r\n\r\n".encode())
        status, headers, body, _ = read_answer_keeping(sock)
    assert status == 200 and headers["content-type"] == "application/json"  # served as an ordinary request
    assert forwarder.requests[-1].path == "/health"


@pytest.mark.parametrize(
    "door", [EdgeLimits(max_header_bytes=2048, client_timeout_s=30.0, max_connections=3)], indirect=True
)
def test_connections_past_the_cap_get_503_at_once_and_are_closed(door: tuple[int, EchoForwarder]) -> None:
    port, _ = door
    held = [connect(port) for _ in range(3)]
    try:
        time.sleep(0.2)  # let the server accept them
        with connect(port) as extra:
            status, headers, body, closed = read_answer(extra)
        assert status == 503 and closed and headers["retry-after"] == "1"
        assert body["error_type"] == "TooManyConnections" and "3 connections are open" in body["error"]
        held.pop().close()
        time.sleep(0.2)
        assert_still_serving(port)
    finally:
        for sock in held:
            sock.close()


def test_the_connection_cap_stays_below_the_open_file_limit() -> None:
    import resource

    from orchestrator.frontdoor.server import FILE_DESCRIPTOR_RESERVE, within_open_file_limit

    limits = within_open_file_limit(EdgeLimits(max_header_bytes=1, client_timeout_s=1.0, max_connections=10**9))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert limits.max_connections == soft - FILE_DESCRIPTOR_RESERVE
    small = EdgeLimits(max_header_bytes=1, client_timeout_s=1.0, max_connections=100)
    assert within_open_file_limit(small) == small


def test_warnings_about_bad_clients_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = RateLimitedLog(period_s=10.0, clock=lambda: now[0])
    caplog.set_level("WARNING")
    written = []
    for second in range(0, 30):
        now[0] = float(second)
        written.append(log.warning("bad client %d", second))
    assert written.count(True) == 3 and written[0] and written[10] and written[20]
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "bad client 0",
        "bad client 10 (9 more since the last one)",
        "bad client 20 (9 more since the last one)",
    ]
