"""Serve the front door over HTTP (uvicorn) on a thread of the ``orchestrator up`` process.

The port is bound at ``start()``, before Ray starts, so a busy port fails fast and clients get a JSON 503
("starting") instead of a refused connection while the model loads. ``stop()`` closes the listening socket, lets
in-flight requests finish (up to the grace period), then returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from orchestrator.config import LoadedConfig
from orchestrator.contracts.errors import PortBusy
from orchestrator.frontdoor.app import FrontDoor
from orchestrator.frontdoor.edge import EdgeLimits, protocol_factory, rate_limited_exception_handler
from orchestrator.frontdoor.stats import FrontDoorStats

if TYPE_CHECKING:
    from orchestrator.frontdoor.workers import FrontDoorWorkers

T = TypeVar("T")
logger = logging.getLogger(__name__)
DEFAULT_LIMITS = EdgeLimits(max_header_bytes=32 * 1024, client_timeout_s=15.0, max_connections=4096)
FILE_DESCRIPTOR_RESERVE = 256


class FrontDoorServer:
    """uvicorn serving ``front_door`` on ``host:port`` from a background thread."""

    def __init__(
        self,
        front_door: FrontDoor,
        host: str,
        port: int,
        limits: EdgeLimits = DEFAULT_LIMITS,
        shutdown_grace_s: float = 30.0,
    ) -> None:
        self.front_door = front_door
        self._host = host
        self._port = port
        self._limits = limits
        self._grace_s = shutdown_grace_s
        self._server = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.listening_socket: socket.socket | None = None
        self.workers: FrontDoorWorkers | None = None  # the other front-door processes, once started

    def start(
        self,
        listening: socket.socket | None = None,
        before_serving: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Bind the port (raises PortBusy) and start serving in the background.

        A front-door worker passes the ``up`` process's ``listening`` socket instead (inherited: the processes take
        turns accepting on it) and ``before_serving``, run on the server's loop before the first accept (it opens
        the worker's lanes, so the worker never answers "starting").
        """
        import uvicorn

        sock = listening if listening is not None else self._bind()
        self.listening_socket = sock
        limits = within_open_file_limit(self._limits)
        config = uvicorn.Config(
            self.front_door,
            http=protocol_factory(limits),  # header size and time, connection cap, JSON for malformed HTTP
            ws="none",  # upgrade requests are answered as ordinary requests (JSON), never switched
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=self._grace_s,
            timeout_keep_alive=30,
            # No X-Forwarded-For rewriting (nothing here reads the client's address; a middleware per request) and
            # no "server: uvicorn" header on every answer.
            proxy_headers=False,
            server_header=False,
        )
        server = uvicorn.Server(config)
        self._server = server

        async def serve_then_close() -> None:
            self._loop = asyncio.get_running_loop()
            self._loop.set_exception_handler(rate_limited_exception_handler)
            try:
                if before_serving is not None:
                    await before_serving()
                await server.serve(sockets=[sock])
            finally:
                if self.workers is not None:  # they forward to the replicas too: Serve stops after them
                    await asyncio.to_thread(self.workers.wait, self._grace_s + 5.0)
                await self.front_door.aclose()

        self._thread = threading.Thread(target=lambda: run_loop(serve_then_close()), name="front-door", daemon=True)
        self._thread.start()
        while not server.started and self._thread.is_alive():
            threading.Event().wait(0.01)

    def _bind(self) -> socket.socket:
        """The listening socket on ``host:port``; raises PortBusy."""
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
        sock.set_inheritable(True)
        return sock

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
        if self.workers is not None:
            self.workers.stop()
        self._server.should_exit = True
        self._thread.join(self._grace_s + 30.0)  # + the on-close step (Serve's drain)


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run the front door's loop: uvloop's where installed, asyncio's otherwise.

    Most of the front door's CPU per request is the event loop's own work (its tasks, futures, timers and socket
    writes: 57 % of the non-idle samples of a py-spy profile at 32 clients, docs/benchmarks.md), which uvloop does in
    C. Everything on this loop (uvicorn, the lanes, Serve's handles) runs on either.
    """
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def within_open_file_limit(limits: EdgeLimits) -> EdgeLimits:
    """``limits`` with the connection cap below this process's open-file limit (raised to its hard limit first).

    Connections past the cap are refused at once, so the descriptors they would hold never run out: the lanes to
    replicas, Ray's sockets and files keep ``FILE_DESCRIPTOR_RESERVE`` of them.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    ceiling = max(soft - FILE_DESCRIPTOR_RESERVE, 1)
    if limits.max_connections <= ceiling:
        return limits
    logger.warning(
        "server.max_connections %d is above what %d open files allow: %d (raise `ulimit -n` for more)",
        limits.max_connections,
        soft,
        ceiling,
    )
    return dataclasses.replace(limits, max_connections=ceiling)


def front_door_server_for(
    loaded: LoadedConfig, stats: FrontDoorStats | None = None, workers: int = 1
) -> FrontDoorServer:
    """The front door configured by ``server.*`` (not started); one of ``workers`` front-door processes, counting
    into ``stats`` (its row of their shared table), holding its share of ``server.max_connections``."""
    server = loaded.config.server
    front_door = FrontDoor(
        server.max_request_bytes, server.request_timeout_s, client_timeout_s=server.client_timeout_s, stats=stats
    )
    connections = max(server.max_connections // workers, 1)
    limits = EdgeLimits(server.max_header_bytes, server.client_timeout_s, connections)
    return FrontDoorServer(front_door, server.host, server.port, limits)
