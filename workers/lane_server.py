"""The replica's end of the direct lane (``orchestrator/contracts/lane_protocol.py``): answer framed HTTP requests
with the replica's own ASGI app.

One asyncio server per replica, on the replica's event loop, on an ephemeral port. Each connection must open with a
HELLO carrying the lane token (compared in constant time); anything else closes it, and until then only a small HELLO
is read (an unauthenticated peer cannot make the replica buffer a large frame). At most ``MAX_CONNECTIONS`` lanes are
open at once. After the greeting, a frame that cannot be taken (too large, not JSON, not a request) fails only its
own request with a JSON answer: one bad request never drops the lane other requests share. Requests on a connection run
concurrently, each as its own task; a CANCEL, or the connection closing, cancels the request's task, which drops its
queued texts in the batcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
from collections.abc import Callable

from orchestrator.contracts.errors import HeadersTooLarge, MalformedRequest, OrchestratorError, PayloadTooLarge
from orchestrator.contracts.forwarding import error_response
from orchestrator.contracts.lane_protocol import (
    CANCEL,
    DEFAULT_LOAD_WINDOW_S,
    HELLO,
    PING,
    PONG,
    REQUEST,
    Frame,
    FrameRejected,
    LaneProtocolError,
    encode,
    read_frame,
    request_from,
    response_frame,
)
from workers.asgi_bridge import AsgiApp, call_asgi

logger = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 64  # front doors are a few per node; past this a connection is closed before it is read

Stats = Callable[[], tuple[float, int]]
"""The replica's (load, queued texts) now, sent back with every answer."""


class LaneServer:
    """Serves ``app`` to front doors that know ``token``; ``instance`` and ``load_window_s`` (the window of the load
    that ``stats`` reports) are named in the HELLO answer."""

    def __init__(
        self, app: AsgiApp, token: str, instance: str, stats: Stats, load_window_s: float = DEFAULT_LOAD_WINDOW_S
    ) -> None:
        self._app = app
        self._load_window_s = load_window_s
        self._token = token.encode()
        self._instance = instance
        self._stats = stats
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int = 0) -> tuple[str, int]:
        """Listen on ``host`` (port 0: any free port); returns the (host, port) actually bound."""
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind((host, port))  # proto=IPPROTO_TCP: asyncio then sets TCP_NODELAY (no 40 ms delayed-ACK waits)
        self._server = await asyncio.start_server(self._serve_connection, sock=sock)
        bound = sock.getsockname()
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        """Stop listening and drop every connection (their requests are cancelled)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = asyncio.current_task()
        if len(self._connections) >= MAX_CONNECTIONS:
            logger.warning("direct lane: %d connections open, refusing another", len(self._connections))
            writer.close()
            return
        if connection is not None:
            self._connections.add(connection)
        requests: dict[int, asyncio.Task[None]] = {}
        try:
            if not await self._greeted(reader, writer):
                return
            while True:
                try:
                    frame = await read_frame(reader)
                except FrameRejected as rejected:  # that request fails, the lane goes on
                    logger.warning("direct lane: %s", rejected)
                    if rejected.kind == REQUEST:
                        self._refuse(rejected, writer)
                    continue
                if frame is None:
                    return
                if frame.kind == REQUEST:
                    task = asyncio.get_running_loop().create_task(self._answer(frame, writer))
                    requests[frame.request_id] = task
                    task.add_done_callback(lambda _, rid=frame.request_id: requests.pop(rid, None))
                elif frame.kind == CANCEL and frame.request_id in requests:
                    requests[frame.request_id].cancel()
                elif frame.kind == PING:
                    writer.write(encode(Frame(frame.request_id, PONG, {})))
        except (LaneProtocolError, asyncio.IncompleteReadError, ConnectionError) as error:
            logger.warning("direct lane connection dropped: %s", error)
        except asyncio.CancelledError:
            pass  # the server is closing: end quietly (asyncio logs a cancelled connection handler as an error)
        finally:
            for task in list(requests.values()):
                task.cancel()
            writer.close()
            if connection is not None:
                self._connections.discard(connection)

    async def _greeted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            hello = await asyncio.wait_for(read_frame(reader, greeting=True), HELLO_TIMEOUT_S)
        except (TimeoutError, LaneProtocolError, asyncio.IncompleteReadError):
            return False
        token = str(hello.meta.get("token", "")).encode() if hello is not None and hello.kind == HELLO else b""
        if not hmac.compare_digest(token, self._token):
            logger.warning("direct lane: refused a connection with a wrong token")
            return False
        writer.write(encode(Frame(0, HELLO, {"instance": self._instance, "load_window_s": self._load_window_s})))
        return True

    def _refuse(self, rejected: FrameRejected, writer: asyncio.StreamWriter) -> None:
        """Answer a request frame that could not be taken with a JSON error (the lane stays open)."""
        if rejected.too_large == "meta":
            error: OrchestratorError = HeadersTooLarge(f"request headers too large for the lane: {rejected}")
        elif rejected.too_large == "body":
            error = PayloadTooLarge(f"request too large for the lane: {rejected}")
        else:
            error = MalformedRequest(f"bad request frame: {rejected}")
        if not writer.is_closing():
            writer.write(encode(response_frame(rejected.request_id, error_response("", error), *self._stats())))

    async def _answer(self, frame: Frame, writer: asyncio.StreamWriter) -> None:
        try:
            request = request_from(frame)
        except LaneProtocolError as error:
            logger.warning("direct lane: bad request frame: %s", error)
            self._refuse(FrameRejected(str(error), frame.request_id, frame.kind), writer)
            return
        try:
            response = await call_asgi(self._app, request)
        except Exception as error:  # the app raised past its own error handling: still one JSON answer
            logger.exception("%s %s failed in the replica", request.method, request.path)
            failure = OrchestratorError(f"internal error in the replica: {type(error).__name__}")
            response = error_response(request.path, failure)
        load, queued = self._stats()
        if not writer.is_closing():
            writer.write(encode(response_frame(frame.request_id, response, load, queued)))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
