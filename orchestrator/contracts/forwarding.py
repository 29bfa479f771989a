"""What travels between the front door and a replica: one HTTP request in, one HTTP response out.

The front door reads the whole request (bounded by ``server.max_request_bytes``, ``BoundedBody``) and hands it to one
replica in a single message (a lane frame, or a Serve handle call); the replica runs it through its own FastAPI app
and returns the whole answer. Embedding answers are
small and never streamed, so one call each way is both the cheapest hop and what makes a request retryable: if the
replica dies, the front door still holds the request and can send it to another one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import orjson

from orchestrator.contracts.errors import OrchestratorError, PayloadTooLarge, error_body

Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True)
class ForwardedRequest:
    """An HTTP request as the replica's ASGI app needs it (header names lower-case, as ASGI has them)."""

    method: str
    path: str
    query_string: bytes
    headers: Headers
    body: bytes


@dataclass(frozen=True)
class ForwardedResponse:
    """A complete HTTP answer."""

    status: int
    headers: Headers
    body: bytes


def error_response(path: str, error: OrchestratorError) -> ForwardedResponse:
    """The JSON answer for ``error`` (its status, body shape and headers), as the front door and replicas send it."""
    headers = [(b"content-type", b"application/json")]
    headers += [(name.lower().encode(), value.encode()) for name, value in error.headers().items()]
    return ForwardedResponse(error.status_code, tuple(headers), orjson.dumps(error_body(path, error)))


class BoundedBody:
    """A request body read a chunk at a time, refused (PayloadTooLarge) the moment it passes ``max_bytes``: the one
    size rule of the front door and the replicas' HTTP app, which each read bodies their own way."""

    def __init__(self, max_bytes: int, declared: bytes | str | None = None) -> None:
        self._max_bytes = max_bytes
        self._chunks: list[bytes] = []
        self._size = 0
        declared_text = declared.decode("latin-1") if isinstance(declared, bytes) else declared
        if declared_text is not None and declared_text.isdigit() and int(declared_text) > max_bytes:
            raise PayloadTooLarge(f"request body of {int(declared_text)} bytes is over the limit of {max_bytes} bytes")

    def add(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._max_bytes:
            raise PayloadTooLarge(f"request body is over the limit of {self._max_bytes} bytes")
        self._chunks.append(chunk)

    def bytes(self) -> bytes:
        return b"".join(self._chunks)


Forwarder = Callable[[ForwardedRequest], Awaitable[ForwardedResponse]]
"""Sends one request to one replica chosen by the balancer; raises InstanceLost or NoInstance."""


class Transport(Protocol):
    """How the front door reaches the replicas (``DirectForwarder``: lanes; ``ServeForwarder``/``NodeSpreadForwarder``:
    Serve handles): a ``Forwarder`` that is opened, reports readiness and is closed on the front door's loop."""

    async def __call__(self, request: ForwardedRequest) -> ForwardedResponse: ...

    async def start(self, wait_s: float = 0.0) -> None:
        """Open what it needs; return once every planned instance is reachable or after ``wait_s``."""

    def readiness(self) -> tuple[int, int]:
        """(instances reachable now, instances planned)."""

    async def aclose(self) -> None:
        """Close what it opened (not Serve: ``deploy`` shuts Serve down)."""


class NodeTransport(Transport, Protocol):
    """One node's transport inside ``NodeSpreadForwarder``: it also stops its background watcher on request."""

    def stop_watching(self) -> None: ...
