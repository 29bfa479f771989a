"""Run one forwarded HTTP request through an in-process ASGI app and collect its whole answer.

The replica's FastAPI app is called directly, without a server: the front door already parsed the HTTP framing and
read the body. If the caller is cancelled (the client went away), the cancellation reaches the app's handler, which
drops the request's queued texts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from orchestrator.contracts.forwarding import ForwardedRequest, ForwardedResponse

AsgiApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


async def call_asgi(
    app: AsgiApp, request: ForwardedRequest, server: tuple[str, int] = ("replica", 0)
) -> ForwardedResponse:
    """Answer ``request`` with ``app``; an app that never starts a response gives a 500 (it is a bug, not input)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode("utf-8", "surrogateescape"),
        "root_path": "",
        "query_string": request.query_string,
        "headers": [tuple(pair) for pair in request.headers],
        "server": server,
        "client": None,
    }
    body_sent = False
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await never.wait()  # the client's disconnect arrives as a cancellation instead
        return {"type": "http.disconnect"}

    status = 500
    headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = [(bytes(name), bytes(value)) for name, value in message.get("headers", ())]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return ForwardedResponse(status, tuple(headers), b"".join(chunks))
