"""Serve the front door over HTTP (uvicorn) on a thread of the ``orchestrator up`` process.

The port is bound at ``start()``, before Ray starts, so a busy port fails fast and clients get a JSON 503
("starting") instead of a refused connection while the model loads. ``stop()`` closes the listening socket, lets
in-flight requests finish (up to the grace period), then returns.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from orchestrator.config import LoadedConfig
from orchestrator.errors import OrchestratorError
from orchestrator.front_door import FrontDoor

T = TypeVar("T")


class PortBusy(OrchestratorError):
    """The configured host:port cannot be listened on."""

    error_type = "PortBusy"


class FrontDoorServer:
    """uvicorn serving ``front_door`` on ``host:port`` from a background thread."""

    def __init__(self, front_door: FrontDoor, host: str, port: int, shutdown_grace_s: float = 30.0) -> None:
        self.front_door = front_door
        self._host = host
        self._port = port
        self._grace_s = shutdown_grace_s
        self._server = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.listening_socket: socket.socket | None = None

    def start(self) -> None:
        """Bind the port (raises PortBusy) and start serving in the background."""
        import uvicorn

        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say so, and without it a
        # keep-alive client waits for a delayed ACK (40 ms) on every answer written in two parts (headers, body).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError as error:
            sock.close()
            where = f"{self._host}:{self._port}"
            if error.errno == errno.EADDRINUSE:
                raise PortBusy(f"{where} is already in use: stop what holds it, or pass --port N") from None
            raise PortBusy(f"cannot listen on {where} ({error.strerror}): check server.host or --port") from None
        sock.listen(2048)
        self.listening_socket = sock
        sock.set_inheritable(True)
        config = uvicorn.Config(
            self.front_door,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=self._grace_s,
            timeout_keep_alive=30,
        )
        server = uvicorn.Server(config)
        self._server = server

        async def serve_then_close() -> None:
            self._loop = asyncio.get_running_loop()
            try:
                await server.serve(sockets=[sock])
            finally:
                await self.front_door.aclose()

        self._thread = threading.Thread(target=lambda: asyncio.run(serve_then_close()), name="front-door", daemon=True)
        self._thread.start()
        while not server.started and self._thread.is_alive():
            threading.Event().wait(0.01)

    def run_on_loop(self, coroutine: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Run ``coroutine`` on the server's event loop (where forwarders must live) and return its result."""
        if self._loop is None:
            coroutine.close()
            raise RuntimeError("the front door is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def stop(self) -> None:
        """Stop accepting, finish in-flight requests (up to the grace period), run the front door's on-close step
        on the server's loop, and join the thread."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(self._grace_s + 30.0)  # + the on-close step (Serve's drain)


def front_door_server_for(loaded: LoadedConfig) -> FrontDoorServer:
    """The front door configured by ``server.*`` (not started)."""
    server = loaded.config.server
    front_door = FrontDoor(server.max_request_bytes, server.request_timeout_s)
    return FrontDoorServer(front_door, server.host, server.port)
