"""What travels between the front door and a replica: one HTTP request in, one HTTP response out.

The front door reads the whole request (bounded by ``server.max_request_bytes``) and hands it to one replica in a
single Ray call; the replica runs it through its own FastAPI app and returns the whole answer. Embedding answers are
small and never streamed, so one call each way is both the cheapest hop and what makes a request retryable: if the
replica dies, the front door still holds the request and can send it to another one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

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


class InstanceLost(Exception):
    """The replica handling the request died or became unreachable before answering (safe to retry elsewhere)."""


class NoInstance(Exception):
    """No replica is running (yet) to take the request."""


Forwarder = Callable[[ForwardedRequest], Awaitable[ForwardedResponse]]
"""Sends one request to one replica chosen by the balancer; raises InstanceLost or NoInstance."""
