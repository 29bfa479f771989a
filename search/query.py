"""One search: embed the query (with the model's query instruction), search the store, optionally rerank.

``Searcher`` is what the CLI, the HTTP app and the UI share. It checks every query vector against the model the store
was built with (``ModelMismatch`` otherwise) and times each stage, so a caller can show where the time went and which
instance embedded the query (the service's ``x-instance`` header).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from search.embedding_client import EmbeddingClient, ServiceFacts
from search.errors import BadQuery, SettingsError
from search.rerank import rerank_client, rerank_hits
from search.settings import SearchSettings
from search.stores.base import Hit, VectorStore, check_binding

MAX_K = 1000


@dataclass(frozen=True)
class SearchResult:
    query: str
    hits: list[Hit]
    timings_ms: dict[str, float] = field(default_factory=dict)  # embed, search, rerank (when done)
    instance: str | None = None  # which instance embedded the query
    model: str = ""
    prompt_name: str | None = None  # the instruction the query was embedded with
    reranked: bool = False


class Searcher:
    """Queries one store through one embedding service; use as ``async with Searcher(...)``."""

    def __init__(self, settings: SearchSettings, store: VectorStore, client: EmbeddingClient) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self._facts: ServiceFacts | None = None
        self._rerank_http = rerank_client(settings.api_key_env, settings.timeout_s) if settings.rerank.url else None

    async def __aenter__(self) -> Searcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._rerank_http is not None:
            await self._rerank_http.aclose()

    async def facts(self, authorization: str | None = None) -> ServiceFacts:
        if self._facts is None:
            self._facts = await self.client.facts(authorization)
        return self._facts

    async def search(
        self,
        query: str,
        k: int = 10,
        sources: Sequence[str] | None = None,
        rerank: bool = False,
        exact: bool = False,
        authorization: str | None = None,
    ) -> SearchResult:
        """The ``k`` best chunks for ``query``; raises BadQuery, ModelMismatch, EmptyStore, ServiceError, StoreError.

        ``authorization``: the header to send the embedding service on this search's calls instead of the client's
        own (the HTTP route forwards its caller's).
        """
        if not query.strip():
            raise BadQuery("the query is empty")
        if not 1 <= k <= MAX_K:
            raise BadQuery(f"k must be between 1 and {MAX_K}, not {k}")
        if rerank and self._rerank_http is None:
            raise SettingsError("--rerank needs a reranker: set rerank.url (a service answering POST /v1/rerank)")
        facts = await self.facts(authorization)
        timings: dict[str, float] = {}

        started = time.perf_counter()
        embedded = await self.client.embed([query], prompt_name=facts.query_prompt_name, authorization=authorization)
        timings["embed"] = (time.perf_counter() - started) * 1000
        vector = embedded.vectors[0]
        stored = await asyncio.to_thread(self.store.binding)
        check_binding(stored, facts.model or embedded.model, int(vector.shape[0]))

        started = time.perf_counter()
        candidates = self.settings.rerank.candidates if rerank else k
        hits = await asyncio.to_thread(self.store.search, vector, max(k, candidates), sources, exact)
        timings["search"] = (time.perf_counter() - started) * 1000

        if rerank:
            assert self._rerank_http is not None and self.settings.rerank.url is not None
            started = time.perf_counter()
            hits = await rerank_hits(
                self._rerank_http, self.settings.rerank.url, query, hits, k, self.settings.rerank.model
            )
            timings["rerank"] = (time.perf_counter() - started) * 1000
        return SearchResult(
            query=query,
            hits=hits[:k],
            timings_ms=timings,
            instance=embedded.instance,
            model=facts.model or embedded.model,
            prompt_name=facts.query_prompt_name,
            reranked=rerank,
        )
