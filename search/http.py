"""``POST /v1/search`` as a small ASGI app, for the front door to mount (or to run on its own with uvicorn).

``build_search_app(settings)`` returns a Starlette app that answers ``POST /`` and ``POST /v1/search`` alike, so it
works both when mounted under ``/v1/search`` (Starlette's ``Mount`` strips the prefix) and when a raw ASGI router hands
it the full path. Request and answer::

    {"query": "how are slices placed?", "k": 10, "sources": ["docs/mig.md"], "rerank": false}
    -> {"hits": [{"id", "doc_id", "source", "ordinal", "text", "score"}...], "model", "instance",
        "prompt_name", "timings_ms": {"embed", "search", ["rerank"]}, "reranked"}

Errors are mapped once, from ``SearchError.status_code``, to OpenAI's error shape (the route is under ``/v1``): 422 for
a malformed request, 409 when the store was built with another model, 404 for an empty store, 502 when the embedding
service fails. The store and the service's client are opened on the first request, not when the app is built.
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
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from search.errors import BadQuery, SearchError
from search.query import MAX_K, Searcher
from search.settings import SearchSettings

logger = logging.getLogger(__name__)


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1)
    k: int = Field(10, ge=1, le=MAX_K)
    sources: list[str] | None = None  # only hits from these files
    rerank: bool = False


def _error(error: SearchError) -> JSONResponse:
    body = {"error": {"message": error.message, "type": error.error_type, "code": error.status_code}}
    return JSONResponse(body, status_code=error.status_code)


class _Backend:
    """The store and the client, opened once on first use and shared by every request."""

    def __init__(self, settings: SearchSettings) -> None:
        self.settings = settings
        self._searcher: Searcher | None = None
        self._lock = asyncio.Lock()

    async def searcher(self) -> Searcher:
        async with self._lock:
            if self._searcher is None:
                from search.wiring import make_client, make_store

                store = await asyncio.to_thread(make_store, self.settings)
                self._searcher = Searcher(self.settings, store, make_client(self.settings))
            return self._searcher

    async def aclose(self) -> None:
        if self._searcher is not None:
            await self._searcher.client.__aexit__(None, None, None)
            await self._searcher.__aexit__(None, None, None)
            self._searcher.store.close()
            self._searcher = None


def build_search_app(settings: SearchSettings) -> Starlette:
    """The ASGI app of ``POST /v1/search`` over the store and the embedding service the settings name."""
    backend = _Backend(settings)

    async def search(request: Request) -> JSONResponse:
        try:
            try:
                body = SearchRequest.model_validate(json.loads(await request.body()))
            except (ValueError, ValidationError) as error:
                problem = error.errors()[0] if isinstance(error, ValidationError) else None
                where = ".".join(str(p) for p in problem["loc"]) if problem else "body"
                raise BadQuery(f"{where}: {problem['msg'] if problem else 'not JSON'}") from None
            searcher = await backend.searcher()
            result = await searcher.search(body.query, k=body.k, sources=body.sources, rerank=body.rerank)
        except SearchError as error:
            return _error(error)
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
        lifespan=lifespan,
    )
    app.state.backend = backend
    return app
