"""The replica's end of the direct lane (``orchestrator/lane_protocol.py``): answer framed HTTP requests with the
replica's own ASGI app.

One asyncio server per replica, on the replica's event loop, on an ephemeral port. Each connection must open with a
HELLO carrying the lane token (compared in constant time); anything else closes it. Requests on a connection run
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

from orchestrator.errors import OrchestratorError
from orchestrator.forwarding import error_response
from orchestrator.lane_protocol import (
    CANCEL,
    HELLO,
    REQUEST,
    Frame,
    LaneProtocolError,
    encode,
    read_frame,
    request_from,
    response_frame,
)
from workers.asgi_bridge import AsgiApp, call_asgi

logger = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 5.0

Stats = Callable[[], tuple[float, int]]
"""The replica's (load, queued texts) now, sent back with every answer."""


class LaneServer:
    """Serves ``app`` to front doors that know ``token``; ``instance`` is named in the HELLO answer."""

    def __init__(self, app: AsgiApp, token: str, instance: str, stats: Stats) -> None:
        self._app = app
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
        if connection is not None:
            self._connections.add(connection)
        requests: dict[int, asyncio.Task[None]] = {}
        try:
            if not await self._greeted(reader, writer):
                return
            while True:
                frame = await read_frame(reader)
                if frame is None:
                    return
                if frame.kind == REQUEST:
                    task = asyncio.get_running_loop().create_task(self._answer(frame, writer))
                    requests[frame.request_id] = task
                    task.add_done_callback(lambda _, rid=frame.request_id: requests.pop(rid, None))
                elif frame.kind == CANCEL and frame.request_id in requests:
                    requests[frame.request_id].cancel()
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
            hello = await asyncio.wait_for(read_frame(reader), HELLO_TIMEOUT_S)
        except (TimeoutError, LaneProtocolError, asyncio.IncompleteReadError):
            return False
        token = str(hello.meta.get("token", "")).encode() if hello is not None and hello.kind == HELLO else b""
        if not hmac.compare_digest(token, self._token):
            logger.warning("direct lane: refused a connection with a wrong token")
            return False
        writer.write(encode(Frame(0, HELLO, {"instance": self._instance})))
        return True

    async def _answer(self, frame: Frame, writer: asyncio.StreamWriter) -> None:
        try:
            request = request_from(frame)
        except LaneProtocolError as error:
            logger.warning("direct lane: bad request frame: %s", error)
            writer.close()
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
