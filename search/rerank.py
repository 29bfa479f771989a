"""The optional second stage: re-score first-stage hits with a reranker served at some URL.

Speaks ``POST /v1/rerank`` in the shape Cohere, Jina, vLLM and ``orchestrator up`` of a ``model.task: rerank`` config
share (docs/rerank.md): ``{query, documents, top_n, return_documents: false}`` -> ``results[{index,
relevance_score}]``, best first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import httpx

from search.embedding_client import auth_headers
from search.errors import ServiceError
from search.stores.base import Hit


async def rerank_hits(
    http: httpx.AsyncClient, url: str, query: str, hits: Sequence[Hit], top_n: int, model: str | None = None
) -> list[Hit]:
    """``hits`` re-ordered by the reranker, the best ``top_n``, each ``score`` replaced by its relevance.

    Raises ServiceError when the reranker fails or answers something else than the documents it was given.
    """
    if not hits:
        return []
    body: dict[str, Any] = {
        "query": query,
        "documents": [hit.text for hit in hits],
        "top_n": top_n,
        "return_documents": False,
    }
    if model:
        body["model"] = model
    endpoint = f"{url.rstrip('/')}/v1/rerank"
    try:
        response = await http.post(endpoint, json=body)
    except httpx.HTTPError as error:
        raise ServiceError(f"{endpoint}: cannot reach the reranker ({error})") from None
    if response.status_code != 200:
        raise ServiceError(f"{endpoint}: {response.status_code} {response.text[:300]}")
    try:
        results = response.json()["results"]
        ranked = [dataclasses.replace(hits[int(r["index"])], score=float(r["relevance_score"])) for r in results]
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise ServiceError(f"{endpoint}: not a rerank answer ({error!r})") from None
    ranked.sort(key=lambda hit: -hit.score)  # a server may ignore top_n or answer in its input order
    return ranked[:top_n]


def rerank_client(api_key_env: str | None, timeout_s: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(headers=auth_headers(api_key_env), timeout=httpx.Timeout(timeout_s, connect=10.0))
