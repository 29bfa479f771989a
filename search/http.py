"""``POST /v1/search`` as a small ASGI app, for the front door to mount (or to run on its own with uvicorn).

``build_search_app(settings)`` returns a Starlette app that answers ``POST /`` and ``POST /v1/search`` alike, so it
works mounted under ``/v1/search`` (by ``orchestrator up`` with a ``search:`` section, or Starlette's ``Mount``: the
prefix is in ``root_path``, and the prefix itself is the app's ``/``) and run on its own. Request and answer::

    {"query": "how are slices placed?", "k": 10, "sources": ["docs/mig.md"], "rerank": false}
    -> {"hits": [{"id", "doc_id", "source", "ordinal", "text", "score"}...], "model", "instance",
        "prompt_name", "timings_ms": {"embed", "search", ["rerank"]}, "reranked"}

Every failure is JSON in the shape the service's other ``/v1`` routes answer (OpenAI's: ``{"error": {"message",
"type", "param", "code"}}``), its status from ``SearchError.status_code``: 422 for a malformed request, 413/408 for a
body too large or stalled, 409 when the store was built with another model, 404 for an empty store or another path,
405 for another method, 502 when the embedding service fails (503 with ``Retry-After`` while it is full or starting),
500 for a store failure or anything unexpected (logged; the app keeps serving). The store and the service's client
are opened on the first request, not when the app is built, and again on the next request if that failed.

``forward_authorization``: the caller's ``Authorization`` header goes with this request's calls to the embedding
service (the service mounting this app checked it already, and calls itself); otherwise the settings' own
``api_key_env`` is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from search.errors import BadQuery, RequestTooLarge, RequestTooSlow, SearchError, ServiceBusy
from search.query import MAX_K, Searcher
from search.settings import SearchSettings

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024  # a query, a few sources: far below this
BODY_TIMEOUT_S = 15.0  # the longest a body may stall (the service passes its server.client_timeout_s)
RETRY_WAIT_S = 10.0  # how long one search waits out 429/503 answers of the embedding service before answering 503
HTTP_ERROR_CODES = {404: "NotFound", 405: "MethodNotAllowed"}


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1)
    k: int = Field(10, ge=1, le=MAX_K)
    sources: list[str] | None = None  # only hits from these files
    rerank: bool = False


def error_payload(message: str, openai_type: str, code: str) -> dict[str, Any]:
    """The service's one error shape under ``/v1`` (``orchestrator.contracts.errors.error_body``)."""
    return {"error": {"message": message, "type": openai_type, "param": None, "code": code}}


def _error(error: SearchError) -> JSONResponse:
    headers = {"Retry-After": "1"} if isinstance(error, ServiceBusy) else None
    body = error_payload(error.message, error.openai_type, error.error_type)
    return JSONResponse(body, status_code=error.status_code, headers=headers)


async def _http_error(_request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    code = HTTP_ERROR_CODES.get(error.status_code, "HTTP")
    message = f'{error.detail}: this route answers POST with a JSON body ({{"query": ...}})'
    body = error_payload(message, "invalid_request_error", code)
    return JSONResponse(body, status_code=error.status_code, headers=error.headers)


async def _read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The whole body; RequestTooLarge past ``max_bytes``, RequestTooSlow when it stalls for ``timeout_s``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise RequestTooLarge(f"request body of {int(declared)} bytes is over the limit of {max_bytes} bytes")
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout_s)
        except StopAsyncIteration:
            return b"".join(chunks)
        except asyncio.TimeoutError:
            raise RequestTooSlow(f"the request body stalled for {timeout_s:g} s") from None
        size += len(chunk)
        if size > max_bytes:
            raise RequestTooLarge(f"request body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)


def _parse(body: bytes) -> SearchRequest:
    try:
        raw = json.loads(body)
    except ValueError:  # not JSON, or not UTF-8
        raise BadQuery('body: not JSON: send {"query": "...", "k": 10}') from None
    if not isinstance(raw, dict):
        raise BadQuery('body: must be a JSON object: {"query": "...", "k": 10}')
    try:
        return SearchRequest.model_validate(raw)
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "body"
        raise BadQuery(f"{where}: {problem['msg']}") from None


class _Backend:
    """The store and the client, opened once on first use and shared by every request."""

    def __init__(self, settings: SearchSettings, retry_wait_s: float) -> None:
        self.settings = settings
        self._retry_wait_s = retry_wait_s
        self._searcher: Searcher | None = None
        self._lock = asyncio.Lock()

    async def searcher(self) -> Searcher:
        async with self._lock:
            if self._searcher is None:
                from search.wiring import make_client, make_store

                store = await asyncio.to_thread(make_store, self.settings)
                client = make_client(self.settings, max_retry_wait_s=self._retry_wait_s)
                self._searcher = Searcher(self.settings, store, client)
            return self._searcher

    async def aclose(self) -> None:
        if self._searcher is not None:
            await self._searcher.client.__aexit__(None, None, None)
            await self._searcher.__aexit__(None, None, None)
            self._searcher.store.close()
            self._searcher = None


class _PrefixIsRoot:
    """Mounted under a prefix, a request for the prefix itself (``/v1/search``) has an empty route path, which
    Starlette's router would not match (nor redirect: ``redirect_slashes`` is off); it is the app's ``/``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        root = scope.get("root_path", "")
        if scope["type"] == "http" and root and scope["path"] == root:
            scope = {**scope, "path": root + "/"}
        await self.app(scope, receive, send)


def build_search_app(
    settings: SearchSettings,
    *,
    forward_authorization: bool = False,
    max_body_bytes: int = MAX_BODY_BYTES,
    body_timeout_s: float = BODY_TIMEOUT_S,
    retry_wait_s: float = RETRY_WAIT_S,
) -> Starlette:
    """The ASGI app of ``POST /v1/search`` over the store and the embedding service the settings name."""
    backend = _Backend(settings, retry_wait_s)

    async def search(request: Request) -> Response:
        try:
            body = _parse(await _read_body(request, max_body_bytes, body_timeout_s))
            if body.rerank and not settings.rerank.url:
                raise BadQuery("rerank: this search service has no reranker (its settings set no rerank.url)")
            authorization = request.headers.get("authorization") if forward_authorization else None
            searcher = await backend.searcher()
            result = await searcher.search(
                body.query, k=body.k, sources=body.sources, rerank=body.rerank, authorization=authorization
            )
        except SearchError as error:
            return _error(error)
        except ClientDisconnect:
            return Response(status_code=499)  # nobody reads it
        except Exception as error:  # a store or library failure we do not know: JSON, logged, never a crash
            logger.exception("POST /v1/search failed")
            return _error(SearchError(f"internal error in the search route: {type(error).__name__}"))
        payload: dict[str, Any] = dataclasses.asdict(result)
        payload.pop("query")
        headers = {"x-instance": result.instance} if result.instance else None
        return JSONResponse(payload, headers=headers)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await backend.aclose()

    app = Starlette(
        routes=[Route("/", search, methods=["POST"]), Route("/v1/search", search, methods=["POST"])],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False
    app.add_middleware(_PrefixIsRoot)
    app.state.backend = backend
    return app
