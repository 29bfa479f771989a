"""An async client of an OpenAI-compatible ``/v1/embeddings`` endpoint, and what the service says about itself.

``ServiceFacts`` come from ``GET /info`` (TEI's shape: model, dimensions, prompts, limits) and ``GET /instances``
(ours: how many instances, each one's capacity); a plain OpenAI-compatible endpoint has neither, and the facts fall
back to conservative defaults and the first answer's dimensions. Vectors travel as base64 (little-endian float32):
a quarter of the JSON to parse. 429 and 503 answers are retried after their ``Retry-After`` (for up to
``max_retry_wait_s``, then ``ServiceBusy``): the service says it is full, not that the request is wrong.

Credentials: the client's own ``Authorization`` comes from ``api_key_env`` (the CLI, the UI); a call may pass its own
``authorization`` instead (``POST /v1/search`` served by the service forwards its caller's header to the service's
own ``/v1/embeddings``).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from search.errors import ServiceBusy, ServiceError

logger = logging.getLogger(__name__)

RETRYABLE = (429, 503)
MAX_RETRY_WAIT_S = 120.0
DEFAULT_BATCH_TEXTS = 32
# Requests kept at each instance: one being computed, one waiting in its queue so it never idles between batches,
# and one more to hide the round trip; beyond that requests only wait in the instance's queue.
REQUESTS_PER_INSTANCE = 3
FALLBACK_IN_FLIGHT = 4  # a service that does not say how many instances it has


@dataclass(frozen=True)
class ServiceFacts:
    model: str | None
    dimensions: int | None
    prompts: dict[str, str] = field(default_factory=dict)
    max_input_tokens: int | None = None
    max_client_batch_size: int | None = None
    instances: int | None = None
    task: str = "embed"

    @property
    def query_prompt_name(self) -> str | None:
        """Qwen3-Embedding's (and most instruction models') name for the query instruction; None if not served."""
        return "query" if self.prompts.get("query") else None  # MiniLM has none; an empty prompt changes nothing

    def batch_texts(self, wanted: int | None = None) -> int:
        size = wanted or DEFAULT_BATCH_TEXTS
        return min(size, self.max_client_batch_size) if self.max_client_batch_size else size

    def in_flight(self, wanted: int | None = None) -> int:
        if wanted:
            return wanted
        return REQUESTS_PER_INSTANCE * self.instances if self.instances else FALLBACK_IN_FLIGHT


@dataclass(frozen=True)
class Embedded:
    vectors: np.ndarray  # (n, dimensions) float32
    model: str
    instance: str | None  # the x-instance header: which instance embedded it
    elapsed_s: float


def auth_headers(api_key_env: str | None) -> dict[str, str]:
    key = os.environ.get(api_key_env) if api_key_env else None
    return {"authorization": f"Bearer {key}"} if key else {}


def _per_call(authorization: str | None) -> dict[str, str] | None:
    """Headers of one call: its own ``Authorization`` (replacing the client's) when it has one."""
    return {"authorization": authorization} if authorization else None


def _decode(item: dict[str, Any]) -> np.ndarray:
    raw = item["embedding"]
    if isinstance(raw, str):
        return np.frombuffer(base64.b64decode(raw), dtype="<f4")
    return np.asarray(raw, dtype=np.float32)


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", error))
    return str(error or body)[:300]


class EmbeddingClient:
    """One connection pool to the service; use as ``async with EmbeddingClient(url) as client``."""

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        api_key_env: str | None = None,
        timeout_s: float = 60.0,
        max_retry_wait_s: float = MAX_RETRY_WAIT_S,
        transport: httpx.AsyncBaseTransport | None = None,  # None: the network (tests hand in a mock)
    ) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.max_retry_wait_s = max_retry_wait_s
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=auth_headers(api_key_env),
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=256),
            transport=transport,
        )
        self.requests = 0  # embedding requests answered 200 (tests and the indexer's report count them)
        self.texts = 0

    async def __aenter__(self) -> EmbeddingClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def _get_json(self, path: str, authorization: str | None = None) -> Any | None:
        try:
            response = await self._http.get(path, headers=_per_call(authorization))
        except httpx.HTTPError as error:
            raise ServiceError(f"{self.url}{path}: cannot reach the embedding service ({error})") from None
        if response.status_code in (404, 405):
            return None  # not our service: a plain OpenAI-compatible endpoint
        if response.status_code != 200:
            raise ServiceError(f"{self.url}{path}: {response.status_code} {_message(response)}")
        return response.json()

    async def facts(self, authorization: str | None = None) -> ServiceFacts:
        """What /info and /instances say (defaults where the service has no such route)."""
        info = await self._get_json("/info", authorization) or {}
        view = await self._get_json("/instances", authorization) or {}
        stats = view.get("instance_stats") if isinstance(view, dict) else None
        return ServiceFacts(
            model=self.model or info.get("model_id"),
            dimensions=info.get("dimensions"),
            prompts=dict(info.get("prompts") or {}),
            max_input_tokens=info.get("max_input_length"),
            max_client_batch_size=info.get("max_client_batch_size"),
            instances=len(stats) if stats else None,
            task=str(info.get("task", "embed")),
        )

    async def embed(
        self, texts: list[str], prompt_name: str | None = None, authorization: str | None = None
    ) -> Embedded:
        """Embed ``texts`` in one request (``authorization``: this call's header instead of the client's); raises
        ServiceError on an answer that is not 200, ServiceBusy when 429/503 answers outlast ``max_retry_wait_s``."""
        body: dict[str, Any] = {"input": texts, "encoding_format": "base64"}
        if self.model:
            body["model"] = self.model
        if prompt_name:
            body["prompt_name"] = prompt_name  # our extension on /v1/embeddings (TEI's field on /embed)
        started = time.perf_counter()
        waited_s = 0.0
        while True:
            try:
                response = await self._http.post("/v1/embeddings", json=body, headers=_per_call(authorization))
            except httpx.TransportError as error:
                response = None
                problem = f"cannot reach {self.url} ({error!r})"
            if response is not None and response.status_code == 200:
                break
            if response is not None and response.status_code not in RETRYABLE:
                raise ServiceError(f"{self.url}/v1/embeddings: {response.status_code} {_message(response)}")
            if response is not None:
                problem = f"{response.status_code} {_message(response)}"
            delay = float(response.headers.get("retry-after", 1)) if response is not None else 1.0
            if waited_s + delay > self.max_retry_wait_s:
                failure = ServiceBusy if response is not None else ServiceError
                raise failure(f"{self.url}/v1/embeddings: still failing after {waited_s:.0f} s: {problem}")
            logger.debug("retrying in %.1f s: %s", delay, problem)
            await asyncio.sleep(delay)
            waited_s += delay
        payload = response.json()
        data = sorted(payload["data"], key=lambda item: item["index"])
        vectors = np.vstack([_decode(item) for item in data]) if data else np.zeros((0, 0), np.float32)
        self.requests += 1
        self.texts += len(texts)
        return Embedded(
            vectors=vectors,
            model=str(payload.get("model") or self.model or ""),
            instance=response.headers.get("x-instance"),
            elapsed_s=time.perf_counter() - started,
        )
