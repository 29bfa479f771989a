"""Routing by model: the front door's transport when several models share the endpoint.

Each model has its own transport (its own lanes or Serve handles, balancer, outstanding counts), made over its own
instances only: the balancer ranks only the instances serving the model a request names, and a flood on one model
fills that model's replicas' queues (429 there) without touching another model's. ``ModelRouter`` picks the
transport from the request's ``model`` field: OpenAI's, and on TEI's routes an optional ``model`` (an extension).

The body is read only when the endpoint serves more than one model, and parsed only when its bytes contain
``"model"``; a one-model endpoint uses its transport directly (``open_router`` returns it unwrapped), so its path is
as short as it was. A request naming no model, or a name nobody answers to, goes to the default model's instances:
their replica answers it, or answers 404 with every served name after its own API-key check (the catalogue is in
every replica's spec), so the list of models is never shown to a caller without the key and the 404 has the same
shape as every other error of that route.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import orjson

from orchestrator.contracts.catalogue import ModelCatalogue
from orchestrator.contracts.forwarding import ForwardedRequest, ForwardedResponse, Transport

# The routes whose body may name a model; every other request (GET /health, /metrics, /info...) goes to any model
# with a running instance, the default one first.
MODEL_ROUTES = frozenset(
    {
        "/v1/embeddings",
        "/embeddings",
        "/embed",
        "/",
        "/invocations",
        "/rerank",
        "/v1/rerank",
        "/tokenize",
        "/decode",
        "/similarity",
    }
)
MODEL_KEY = b'"model"'


def requested_model(body: bytes) -> str | None:
    """The body's top-level ``model`` string, or None (no such field, not JSON, not a string)."""
    if MODEL_KEY not in body:  # the common case costs one byte scan, no parse
        return None
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None  # the replica answers the malformed body itself
    model = payload.get("model") if isinstance(payload, dict) else None
    return model if isinstance(model, str) else None


class ModelRouter:
    """A ``Transport`` over one transport per model (``transports``: served name -> transport)."""

    def __init__(self, catalogue: ModelCatalogue, transports: Mapping[str, Transport]) -> None:
        missing = [entry.name for entry in catalogue.entries if entry.name not in transports]
        if missing:
            raise ValueError(f"no transport for model(s) {', '.join(missing)}")
        self._catalogue = catalogue
        self._transports = dict(transports)
        self._default = self._transports[catalogue.default.name]

    def transport_for(self, request: ForwardedRequest) -> Transport:
        """The transport of the model ``request`` names (the default model's when it names none or an unknown one)."""
        if request.path in MODEL_ROUTES and request.method == "POST":
            name = requested_model(request.body)
            entry = self._catalogue.find(name) if name is not None else None
            return self._transports[entry.name] if entry is not None else self._default
        if self._default.readiness()[0] > 0:
            return self._default
        # A model-neutral request (health, metrics, the dashboard) is answered by any replica.
        return next((t for t in self._transports.values() if t.readiness()[0] > 0), self._default)

    async def __call__(self, request: ForwardedRequest) -> ForwardedResponse:
        return await self.transport_for(request)(request)

    async def start(self, wait_s: float = 0.0) -> None:
        await asyncio.gather(*(transport.start(wait_s) for transport in self._transports.values()))

    def readiness(self) -> tuple[int, int]:
        """(instances reachable, instances planned) over every model."""
        counts = [transport.readiness() for transport in self._transports.values()]
        return sum(ready for ready, _ in counts), sum(planned for _, planned in counts)

    def readiness_by_model(self) -> dict[str, tuple[int, int]]:
        """Each model's (instances reachable, instances planned)."""
        return {name: transport.readiness() for name, transport in self._transports.items()}

    async def aclose(self) -> None:
        for transport in self._transports.values():
            await transport.aclose()


def open_router(catalogue: ModelCatalogue, transports: Mapping[str, Transport]) -> Transport:
    """The front door's transport: the only model's own, or a ``ModelRouter`` over several."""
    if len(transports) == 1:
        return next(iter(transports.values()))
    return ModelRouter(catalogue, transports)
