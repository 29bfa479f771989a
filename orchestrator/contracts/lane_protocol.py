"""The direct lane's wire format: framed messages between the front door and one replica over one TCP connection.

Why a lane at all: a call through a Ray Serve handle costs about 4 ms and a share of both processes' CPU (router,
gRPC, Serve's per-request bookkeeping) for what is one HTTP request in and one answer out. The front door already
chooses the replica itself, so it keeps one connection per replica and sends requests on it, many at once, each
with its own id. Serve still starts, pins, health-checks and replaces replicas: the lane is only the data path.

A frame is a fixed header ``!IBII`` (request id, kind, meta length, body length), ``meta`` (a small JSON object)
and ``body`` (raw bytes: the HTTP body). Kinds:

* ``HELLO``: first frame each way. The front door's carries the lane token (a secret made per ``up``, given to
  replicas in their spec); the replica answers with its instance name and the window its load is measured over
  (``load_window_s``: how fast a reported load goes stale), or closes the connection on a wrong token.
* ``REQUEST``: meta ``{"method", "path", "query", "headers"}`` (strings as latin-1, as HTTP has them), body.
* ``RESPONSE``: meta ``{"status", "headers", "load", "queued_texts"}``: the replica's busy fraction and queue at the
  time it answered ride on every answer, which keeps the balancer's view fresher than any polling.
* ``CANCEL``: the client went away; the replica cancels that request (its queued texts are dropped).
* ``PING`` / ``PONG``: the front door's heartbeat; the replica's event loop answers at once. A replica that stops
  answering (frozen, swapped out, its loop blocked) is taken off the balancer and its requests are resent, instead
  of holding them until the deadline.

Nothing here imports Ray or the model; both sides import this module.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import Any

import orjson

from orchestrator.contracts.forwarding import ForwardedRequest, ForwardedResponse, Headers

HEADER = struct.Struct("!IBII")
HELLO, REQUEST, RESPONSE, CANCEL, PING, PONG = 1, 2, 3, 4, 5, 6
KINDS = (HELLO, REQUEST, RESPONSE, CANCEL, PING, PONG)
MAX_META_BYTES = 1 << 20
MAX_BODY_BYTES = 1 << 30
DEFAULT_LOAD_WINDOW_S = 2.0  # a replica's busy fraction is measured over this many seconds unless it says
MAX_HELLO_META_BYTES = 4096  # before the token is checked, a peer gets no more than this of a replica's memory
DISCARD_CHUNK_BYTES = 1 << 16


class LaneProtocolError(Exception):
    """The peer sent something that is not a frame of this protocol (the connection is then closed)."""


class FrameRejected(LaneProtocolError):
    """One frame could not be taken, but the stream is still in step (its bytes were read past): only the request
    ``request_id`` fails, the lane goes on. ``too_large`` is ``"meta"`` or ``"body"`` when a size limit was hit."""

    def __init__(self, message: str, request_id: int, kind: int, too_large: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.kind = kind
        self.too_large = too_large


@dataclass(frozen=True)
class Frame:
    """One message: ``request_id`` pairs a RESPONSE or CANCEL with its REQUEST (0 for HELLO)."""

    request_id: int
    kind: int
    meta: dict[str, Any]
    body: bytes = b""


def encode(frame: Frame) -> bytes:
    """The frame's bytes, ready for one ``transport.write`` (one write per frame keeps frames whole).

    Raises FrameRejected (nothing is sent) when the frame is over the limits the peer enforces: the sender fails
    that one request instead of sending what would make the peer drop it.
    """
    meta = orjson.dumps(frame.meta)
    if len(meta) > MAX_META_BYTES or len(frame.body) > MAX_BODY_BYTES:
        too_large = "meta" if len(meta) > MAX_META_BYTES else "body"
        sizes = f"meta {len(meta)} B, body {len(frame.body)} B"
        raise FrameRejected(f"frame too large for the lane ({sizes})", frame.request_id, frame.kind, too_large)
    return HEADER.pack(frame.request_id, frame.kind, len(meta), len(frame.body)) + meta + frame.body


async def read_frame(reader: asyncio.StreamReader, greeting: bool = False) -> Frame | None:
    """The next frame, or None at a clean end of stream.

    A frame over the size limits, of an unknown kind or with a meta that is not a JSON object is read past and
    raises FrameRejected: the stream stays in step, so one bad request costs only itself. With ``greeting`` (the
    first frame from a peer not yet authenticated) only a small HELLO is accepted and anything else raises
    LaneProtocolError at once, before reading more than its header. Raises ``asyncio.IncompleteReadError`` when the
    stream ends inside a frame.
    """
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as error:
        if not error.partial:
            return None
        raise
    request_id, kind, meta_size, body_size = HEADER.unpack(header)
    described = f"kind {kind}, meta {meta_size} B, body {body_size} B"
    if greeting:
        if kind != HELLO or meta_size > MAX_HELLO_META_BYTES or body_size:
            raise LaneProtocolError(f"bad greeting ({described})")
    elif kind not in KINDS or meta_size > MAX_META_BYTES or body_size > MAX_BODY_BYTES:
        await _discard(reader, meta_size + body_size)
        too_large = None if kind not in KINDS else ("meta" if meta_size > MAX_META_BYTES else "body")
        raise FrameRejected(f"frame refused ({described})", request_id, kind, too_large)
    meta_bytes = await reader.readexactly(meta_size) if meta_size else b"{}"
    body = await reader.readexactly(body_size) if body_size else b""
    try:
        meta = orjson.loads(meta_bytes)
    except orjson.JSONDecodeError as error:
        raise FrameRejected(f"frame meta is not JSON: {error}", request_id, kind) from None
    if not isinstance(meta, dict):
        raise FrameRejected("frame meta is not a JSON object", request_id, kind)
    return Frame(request_id, kind, meta, body)


async def _discard(reader: asyncio.StreamReader, size: int) -> None:
    """Read past ``size`` bytes, a chunk at a time (never holding them)."""
    while size > 0:
        chunk = await reader.read(min(size, DISCARD_CHUNK_BYTES))
        if not chunk:
            raise asyncio.IncompleteReadError(b"", size)
        size -= len(chunk)


def _text_headers(headers: Headers) -> list[list[str]]:
    return [[name.decode("latin-1"), value.decode("latin-1")] for name, value in headers]


def _byte_headers(headers: Any) -> Headers:
    if not isinstance(headers, list):
        raise LaneProtocolError("headers must be a list of [name, value] pairs")
    try:
        return tuple((str(name).encode("latin-1"), str(value).encode("latin-1")) for name, value in headers)
    except (ValueError, UnicodeEncodeError) as error:
        raise LaneProtocolError(f"bad header pair: {error}") from None


def request_frame(request_id: int, request: ForwardedRequest) -> Frame:
    """A REQUEST frame carrying ``request``."""
    meta = {
        "method": request.method,
        "path": request.path,
        "query": request.query_string.decode("latin-1"),
        "headers": _text_headers(request.headers),
    }
    return Frame(request_id, REQUEST, meta, request.body)


def request_from(frame: Frame) -> ForwardedRequest:
    """The HTTP request a REQUEST frame carries (raises LaneProtocolError if its meta is incomplete)."""
    meta = frame.meta
    try:
        return ForwardedRequest(
            method=str(meta["method"]),
            path=str(meta["path"]),
            query_string=str(meta.get("query", "")).encode("latin-1"),
            headers=_byte_headers(meta.get("headers", [])),
            body=frame.body,
        )
    except (KeyError, UnicodeEncodeError) as error:
        raise LaneProtocolError(f"incomplete request frame: {error}") from None


def response_frame(request_id: int, response: ForwardedResponse, load: float, queued_texts: int) -> Frame:
    """A RESPONSE frame: the answer plus the replica's load and queue now."""
    meta = {
        "status": response.status,
        "headers": _text_headers(response.headers),
        "load": load,
        "queued_texts": queued_texts,
    }
    return Frame(request_id, RESPONSE, meta, response.body)


def response_from(frame: Frame) -> ForwardedResponse:
    """The HTTP answer a RESPONSE frame carries."""
    try:
        return ForwardedResponse(int(frame.meta["status"]), _byte_headers(frame.meta.get("headers", [])), frame.body)
    except (KeyError, TypeError, ValueError) as error:
        raise LaneProtocolError(f"incomplete response frame: {error}") from None
