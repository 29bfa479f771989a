"""The front door's HTTP edge: limits enforced while bytes arrive, before a request reaches the front door's app.

uvicorn's httptools protocol keeps whatever a client sends: an attack run held 300 MB of unfinished headers per
connection, kept slowloris connections forever and exhausted the file descriptors with 20,000 silent connections
(docs/reliability.md). ``GuardedHttpProtocol`` adds, each answered as the JSON every other error gets
(``forwarding.error_response``) and followed by closing the connection:

* **header size**: request line plus headers over ``max_header_bytes`` -> 431 the moment the limit is crossed
  (nothing more is buffered, and nothing of it is forwarded to a replica);
* **header time**: a request's line and headers must arrive within ``client_timeout_s`` of its first byte, or of the
  connection opening -> 408 (idle keep-alive connections are closed silently by uvicorn's keep-alive timer; a body
  that stalls is the front door's to time out, ``frontdoor.app._read_body``);
* **connections**: past ``max_connections`` a new connection gets 503 (``Retry-After``) and is closed at once;
* **malformed HTTP**: 400 JSON instead of uvicorn's text.

Upgrade requests (WebSocket) are served as ordinary requests (the server runs with ``ws="none"``), so they too get
JSON. Warnings about bad clients are rate-limited: a flood of them must not become a flood of log lines.
"""

from __future__ import annotations

import asyncio
import http
import logging
import time
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from orchestrator.contracts.errors import (
    ClientTooSlow,
    HeadersTooLarge,
    MalformedHttp,
    OrchestratorError,
    TooManyConnections,
)
from orchestrator.contracts.forwarding import error_response

logger = logging.getLogger(__name__)

LINGER_S = 1.0  # how long a refused connection's further bytes are read and dropped before it is closed
HEADER_LINE_OVERHEAD = 4  # ": " and CRLF, counted so that many tiny headers cost what they cost on the wire


@dataclass(frozen=True)
class EdgeLimits:
    """What one client connection may hold of the front door."""

    max_header_bytes: int
    client_timeout_s: float
    max_connections: int


class RateLimitedLog:
    """Logs a warning at most once per ``period_s``, saying how many were suppressed since the last one."""

    def __init__(self, period_s: float = 10.0, clock: Any = time.monotonic) -> None:
        self._period_s = period_s
        self._clock = clock
        self._last: float | None = None
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> bool:
        """Log (True) or count as suppressed (False)."""
        now = self._clock()
        if self._last is not None and now - self._last < self._period_s:
            self._suppressed += 1
            return False
        suppressed, self._suppressed, self._last = self._suppressed, 0, now
        suffix = f" ({suppressed} more since the last one)" if suppressed else ""
        logger.warning(message + suffix, *args)
        return True


BAD_CLIENTS = RateLimitedLog()


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing a request that has been answered already."""


def raw_answer(error: OrchestratorError, path: str = "") -> bytes:
    """``error`` as a complete HTTP/1.1 answer that closes the connection (for use before any app is involved)."""
    response = error_response(path, error)
    lines = [f"HTTP/1.1 {response.status} {http.HTTPStatus(response.status).phrase}".encode()]
    lines += [name + b": " + value for name, value in response.headers]
    lines += [b"content-length: " + str(len(response.body)).encode(), b"connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + response.body


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of ``EdgeLimits`` (see the module docstring)."""

    def __init__(self, *args: Any, limits: EdgeLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._awaiting_headers = True
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self._limits.max_connections:
            self.transport = transport  # connection_lost closes it again; it is never counted as a connection
            self._refused = True
            BAD_CLIENTS.warning("front door: %d connections open, refusing more", len(self.connections))
            self._close_after(raw_answer(TooManyConnections(f"{len(self.connections)} connections are open")))
            return
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # served as an ordinary request: the app answers it (ws="none": uvicorn would only log a warning)
        except httptools.HttpParserError as error:
            if not self._refused:
                BAD_CLIENTS.warning("front door: malformed HTTP from %s (%s)", self.client, error)
                self._refuse(MalformedHttp(f"malformed HTTP request ({error})"))
            return
        if self._awaiting_headers and not self._refused:
            # The parser keeps an unfinished header line to itself (on_header sees it only once complete), so the
            # bytes fed while headers are incomplete are counted here: one read past the limit at most is held.
            self._count_header_bytes(len(data), raise_refusal=False)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._awaiting_headers = True
        if self._header_timer is None:
            self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + HEADER_LINE_OVERHEAD)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        self._awaiting_headers = False
        super().on_headers_complete()

    def _count_header_bytes(self, size: int, raise_refusal: bool = True) -> None:
        """Add ``size`` header bytes; past the limit, answer 431 (and stop the parser when called from it)."""
        if self._refused:
            raise _Refused
        self._header_bytes += size
        if self._header_bytes > self._limits.max_header_bytes:
            BAD_CLIENTS.warning("front door: headers over %d bytes from %s", self._limits.max_header_bytes, self.client)
            self._refuse(HeadersTooLarge(f"request line and headers are over {self._limits.max_header_bytes} bytes"))
            if raise_refusal:
                raise _Refused

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self._limits.client_timeout_s, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._refused or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_header_timer()  # a request is being answered: its pipelined successor waits its turn
            return
        timeout_s = self._limits.client_timeout_s
        BAD_CLIENTS.warning("front door: no complete headers from %s in %g s", self.client, timeout_s)
        self._refuse(ClientTooSlow(f"request headers did not arrive within {timeout_s:g} s"))

    def _refuse(self, error: OrchestratorError) -> None:
        """Answer ``error`` (unless another answer is being written) and close the connection."""
        self._refused = True
        self._cancel_header_timer()
        answer = b""
        if self.cycle is None or self.cycle.response_complete:
            path = self.url.decode("latin-1") if isinstance(getattr(self, "url", None), bytes) else ""
            answer = raw_answer(error, path)
        self._close_after(answer)

    def _close_after(self, answer: bytes) -> None:
        """Write ``answer``, end our side, and close once the client has read it (or after ``LINGER_S``).

        Closing a socket with unread bytes from the client makes the kernel send a reset, which can destroy the
        answer before the client reads it (a client still sending its request would see "connection reset", not
        the JSON): so the rest of what it sends is read and dropped for a moment first, as nginx's lingering close.
        """
        transport = self.transport
        if answer:
            transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(LINGER_S, transport.close)


def protocol_factory(limits: EdgeLimits) -> Any:
    """What uvicorn's ``Config(http=...)`` takes: a callable building one guarded protocol per connection."""

    def build(*args: Any, **kwargs: Any) -> GuardedHttpProtocol:
        return GuardedHttpProtocol(*args, limits=limits, **kwargs)

    return build


def rate_limited_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The front door loop's exception handler: asyncio's report (accept() failing under a connection flood logs
    one traceback per attempt), at most one line per period."""
    exception = context.get("exception")
    detail = f" ({exception!r})" if exception else ""
    BAD_CLIENTS.warning("front door event loop: %s%s", context.get("message", ""), detail)
