"""The HTTP API of an instance: OpenAI ``/v1/embeddings`` and ``/v1/models``, TEI ``/embed``, ``/health``, ``/info``;
on a reranker (``model.task: rerank``), TEI's ``/rerank`` and the ``/v1/rerank`` of Cohere, Jina and vLLM instead
(``workers/api_rerank.py``). Each task answers the other's routes with a 400 naming its task.

One FastAPI app per replica (the front door hands it the request after our router picked the replica, so there is no
extra hop). Bodies are read with a size limit and parsed once with orjson; answers are serialised once with orjson
and returned as raw ``Response`` objects, which skips FastAPI's slow ``jsonable_encoder``. Every error, ours or the
framework's, goes through ``error_response``: OpenAI's error shape under ``/v1`` (and on TEI's OpenAI alias
``/embeddings``), TEI's elsewhere.

The other routes TEI serves for an embedding model, so that clients written for TEI work unchanged: ``POST /`` and
``POST /invocations`` (SageMaker) are ``/embed`` (``/rerank`` on a reranker, as in TEI); ``POST /embeddings`` is
``/v1/embeddings``; ``GET /`` and ``GET /ping`` are ``/health`` (``/ping`` is open like ``/health`` when an API key is
set; ``GET /`` is not, as ``POST /`` embeds). These aliases stay out of the OpenAPI schema, which lists each contract
once.

Two settings decide what a request that does not say means (see ``ServiceInfo``): token-id input is refused unless
``server.accept_token_ids`` (ids from another tokenizer, such as the tiktoken ids LangChain sends by default, would
silently embed other words), and a text over the model's limit is cut unless ``server.auto_truncate`` is off or the
request sends ``truncate: false`` (on both routes: it is an extension on the OpenAI one), so every error's advice can
be followed on the route that gave it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.contracts.catalogue import ModelCatalogue, ModelEntry
from orchestrator.contracts.errors import (
    EmptyInput,
    OrchestratorError,
    Unauthorized,
    ValidationFailed,
    error_body,
)
from orchestrator.contracts.snapshot import InstanceReport
from orchestrator.instances_view import instances_view
from orchestrator.metrics import render_prometheus
from workers.api_auth import key_matches, requires_key
from workers.api_bodies import check_count, first_validation_problem, openai_inputs, parse, read_json_body
from workers.api_models import check_model, models_list, retrieve
from workers.api_rerank import RerankRequest, TEIRerankRequest, tei_rerank, v1_rerank, wrong_task
from workers.api_schemas import OpenAIEmbeddingRequest, TEIEmbedRequest
from workers.api_tokens import DecodeRequest, SimilarityRequest, TokenizeRequest, cosine_to_first
from workers.dashboard import register_dashboard
from workers.rerank_service import RerankService
from workers.service import Accounted, EmbeddingService, InstanceService

ReportsSource = Callable[[], Awaitable[list[InstanceReport]]]
Task = TypeVar("Task", EmbeddingService, RerankService)

logger = logging.getLogger(__name__)

JSON = "application/json"


def _json(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status_code, headers, JSON)


# Routes by contract: aliases count under their contract's name, so the metrics' route labels stay a fixed set.
OPENAI_EMBED_PATHS = ("/v1/embeddings", "/embeddings")
TEI_EMBED_PATHS = ("/embed", "/", "/invocations")
HEALTH_PATHS = ("/health", "/ping", "/")

TOKEN_IDS_REFUSED = (
    "input is token ids, and this server reads text only (server.accept_token_ids is false): ids from another "
    "tokenizer would silently embed other words. Send the texts themselves; LangChain's OpenAIEmbeddings sends "
    "tiktoken ids unless created with check_embedding_ctx_length=False. Ids from this model's own tokenizer are "
    "read when the service's config sets server.accept_token_ids: true"
)


def error_response(path: str, error: OrchestratorError) -> Response:
    """The one mapping from an error to its HTTP answer (status, body shape, headers)."""
    body = error_body(path, error)
    return _json(body, error.status_code, error.headers())


def _timing_headers(service: InstanceService, result: Accounted) -> dict[str, str]:
    return {
        "x-instance": service.info.instance,
        "x-compute-tokens": str(result.prompt_tokens),
        "x-queue-time": f"{result.queue_s * 1000:.2f}",
        "x-inference-time": f"{result.inference_s * 1000:.2f}",
    }


def _with_result(response: Response, result: Accounted) -> Response:
    response.accounted = result  # type: ignore[attr-defined]  # read by _instrumented for the metrics
    return response


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {JSON: {"schema": model.model_json_schema()}}}}


async def _instrumented(service: InstanceService, route: str, handle: Callable[[], Awaitable[Response]]) -> Response:
    """Count the request and its outcome in the instance's metrics; errors still reach the one error mapping."""
    metrics = service.metrics
    started = time.perf_counter()
    metrics.request_started(route)
    try:
        response = await handle()
    except asyncio.CancelledError:  # the client (or the front door, for it) gave up: no outcome, not in flight
        metrics.request_abandoned()
        raise
    except OrchestratorError as error:
        metrics.request_finished(time.perf_counter() - started, error_type=error.error_type)
        raise
    except Exception:
        metrics.request_finished(time.perf_counter() - started, error_type="Internal")
        raise
    result: Accounted | None = getattr(response, "accounted", None)
    if result is None:
        metrics.request_finished(time.perf_counter() - started)
    else:
        metrics.request_finished(
            time.perf_counter() - started,
            embeddings=result.rows,  # a reranker's pairs count as its embeddings
            tokens=result.prompt_tokens,
            queue_s=result.queue_s,
            inference_s=result.inference_s,
        )
    return response


def build_app(
    service: EmbeddingService | RerankService,
    reports: ReportsSource | None = None,
    api_key_sha256: str | None = None,
    open_endpoints: tuple[str, ...] = ("health", "metrics"),
    models: ModelCatalogue | None = None,
) -> FastAPI:
    """The ASGI app of one instance, bound to its embedding (or reranking) service.

    ``reports`` returns every instance's metrics (the metrics hub); without it, only this instance is shown.
    With ``api_key_sha256``, every endpoint but the ``open_endpoints`` groups needs ``Authorization: Bearer <key>``
    (401 otherwise); replicas only ever hold the key's digest, and neither the key nor the header is logged.
    ``models``: every model of the endpoint (``/v1/models``, and the names an unknown model's 404 lists); default:
    this instance's model alone.
    """
    # redirect_slashes=False: "/health/" is a JSON 404, not a redirect built from the client's Host header.
    app = FastAPI(title="mig-orchestrator", version="0.1.0", docs_url=None, redoc_url=None, redirect_slashes=False)
    info = service.info
    catalogue = models or ModelCatalogue((ModelEntry(info.model_name, (), info.task),))

    if api_key_sha256 is not None:

        @app.middleware("http")
        async def _authorise(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            path = request.url.path
            if requires_key(path, open_endpoints) and not key_matches(
                request.headers.get("authorization"), api_key_sha256
            ):
                return error_response(path, Unauthorized("missing or wrong API key: send Authorization: Bearer <key>"))
            return await call_next(request)

    async def local_reports() -> list[InstanceReport]:
        return [InstanceReport(labels=service.labels, snapshot=service.snapshot(), rates={}, age_s=0.0)]

    all_reports = reports or local_reports

    @app.exception_handler(OrchestratorError)
    async def _on_error(request: Request, error: OrchestratorError) -> Response:
        return error_response(request.url.path, error)

    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, error: RequestValidationError) -> Response:
        return error_response(request.url.path, ValidationFailed(first_validation_problem(error)))

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, error: StarletteHTTPException) -> Response:
        wrapped = OrchestratorError(str(error.detail))
        wrapped.status_code = error.status_code
        wrapped.error_type = "NotFound" if error.status_code == 404 else "Http"
        wrapped.openai_type = "invalid_request_error"
        return error_response(request.url.path, wrapped)

    @app.exception_handler(Exception)
    async def _on_unexpected(request: Request, error: Exception) -> Response:
        logger.exception("unexpected error on %s", request.url.path)
        return error_response(request.url.path, OrchestratorError(f"internal error: {type(error).__name__}"))

    async def openai_embeddings(request: Request) -> Response:
        return await _instrumented(service, "/v1/embeddings", lambda: _openai(request))

    def _serving(task_service: type[Task]) -> Task:
        if not isinstance(service, task_service):  # a route of the other task
            raise wrong_task(info.model_name, info.task)
        return service

    async def _openai(request: Request) -> Response:
        embedder = _serving(EmbeddingService)
        body: OpenAIEmbeddingRequest = parse(
            OpenAIEmbeddingRequest, await read_json_body(request, info.max_request_bytes)
        )
        _check_model(body.model)
        inputs, pre_tokenized = openai_inputs(body.input)
        if pre_tokenized and not info.accept_token_ids:
            raise ValidationFailed(TOKEN_IDS_REFUSED)
        check_count(service, inputs)
        if any(len(item) == 0 for item in inputs):
            raise EmptyInput("input contains an empty text; every input needs at least one character or token")
        if pre_tokenized and body.prompt_name is not None:
            raise ValidationFailed("prompt_name cannot be combined with token-id input: put the prompt's tokens in")
        result = await embedder.embed(
            inputs,
            pre_tokenized=pre_tokenized,
            truncate=body.truncate,
            normalize=info.normalize_by_default,
            dimensions=body.dimensions,
            prompt_name=body.prompt_name,
        )
        if body.encoding_format == "base64":
            data = [
                {"object": "embedding", "index": i, "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()}
                for i, v in enumerate(result.vectors)
            ]
        else:
            data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(result.vectors)]
        payload = {
            "object": "list",
            "data": data,
            "model": info.model_name,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        }
        return _with_result(_json(payload, headers=_timing_headers(service, result)), result)

    def _check_model(requested: str | None) -> None:
        check_model(catalogue, info.model_name, requested)

    async def tei_embed(request: Request) -> Response:
        return await _instrumented(service, "/embed", lambda: _tei(request))

    async def _tei(request: Request) -> Response:
        embedder = _serving(EmbeddingService)
        body: TEIEmbedRequest = parse(TEIEmbedRequest, await read_json_body(request, info.max_request_bytes))
        _check_model(body.model)
        inputs = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
        check_count(service, inputs)
        if any(not text for text in inputs):
            raise EmptyInput("inputs contains an empty text; every input needs at least one character")
        result = await embedder.embed(
            inputs,
            truncate=body.truncate,
            direction=body.truncation_direction.lower(),
            normalize=body.normalize,
            dimensions=body.dimensions,
            prompt_name=body.prompt_name,
        )
        return _with_result(_json(result.vectors, headers=_timing_headers(service, result)), result)

    async def tei_rerank_route(request: Request) -> Response:
        return await _instrumented(service, "/rerank", lambda: _tei_rerank(request))

    async def _tei_rerank(request: Request) -> Response:
        reranker = _serving(RerankService)
        body = parse(TEIRerankRequest, await read_json_body(request, info.max_request_bytes))
        _check_model(body.model)
        ranks, result = await tei_rerank(reranker, body)
        return _with_result(_json(ranks, headers=_timing_headers(service, result)), result)

    async def v1_rerank_route(request: Request) -> Response:
        return await _instrumented(service, "/v1/rerank", lambda: _v1_rerank(request))

    async def _v1_rerank(request: Request) -> Response:
        reranker = _serving(RerankService)
        body = parse(RerankRequest, await read_json_body(request, info.max_request_bytes))
        _check_model(body.model)
        payload, result = await v1_rerank(reranker, body)
        return _with_result(_json(payload, headers=_timing_headers(service, result)), result)

    async def tokenize(request: Request) -> Response:
        embedder = _serving(EmbeddingService)
        body = parse(TokenizeRequest, await read_json_body(request, info.max_request_bytes))
        _check_model(body.model)
        texts = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
        check_count(service, texts)
        prompt = embedder.prompt_text(body.prompt_name) if body.prompt_name is not None else ""
        return _json([embedder.tokenizer.tokens(text, body.add_special_tokens, prompt) for text in texts])

    async def decode(request: Request) -> Response:
        embedder = _serving(EmbeddingService)
        body = parse(DecodeRequest, await read_json_body(request, info.max_request_bytes))
        _check_model(body.model)
        rows = [body.ids] if not body.ids or isinstance(body.ids[0], int) else body.ids
        check_count(service, rows)
        return _json(embedder.tokenizer.decode(rows, body.skip_special_tokens))  # type: ignore[arg-type]

    async def similarity(request: Request) -> Response:
        return await _instrumented(service, "/similarity", lambda: _similarity(request))

    async def _similarity(request: Request) -> Response:
        embedder = _serving(EmbeddingService)
        body = parse(SimilarityRequest, await read_json_body(request, info.max_request_bytes))
        _check_model(body.model)
        texts = [body.inputs.source_sentence, *body.inputs.sentences]
        check_count(service, texts[1:])
        if any(not text for text in texts):
            raise EmptyInput("source_sentence and sentences need at least one character each")
        parameters = body.parameters
        result = await embedder.embed(
            texts,
            truncate=parameters.truncate if parameters else None,
            direction=parameters.truncation_direction.lower() if parameters else "right",
            prompt_name=parameters.prompt_name if parameters else None,
        )
        scores = cosine_to_first(result.vectors)
        return _with_result(_json(scores, headers=_timing_headers(service, result)), result)

    # Each task's routes are in the OpenAPI schema of its instances only; the other task's answer 400 (WrongTask).
    # TEI's default routes ("/", "/invocations") do the instance's task.
    embeds = isinstance(service, EmbeddingService)
    tei_default = (tei_embed, TEIEmbedRequest) if embeds else (tei_rerank_route, TEIRerankRequest)
    routes: list[tuple[str, Callable[[Request], Awaitable[Response]], type[BaseModel], bool]] = [
        (OPENAI_EMBED_PATHS[0], openai_embeddings, OpenAIEmbeddingRequest, embeds),
        *((path, openai_embeddings, OpenAIEmbeddingRequest, False) for path in OPENAI_EMBED_PATHS[1:]),
        ("/embed", tei_embed, TEIEmbedRequest, embeds),
        ("/rerank", tei_rerank_route, TEIRerankRequest, not embeds),
        ("/v1/rerank", v1_rerank_route, RerankRequest, not embeds),
        *((path, *tei_default, False) for path in TEI_EMBED_PATHS[1:]),
        ("/tokenize", tokenize, TokenizeRequest, embeds),
        ("/decode", decode, DecodeRequest, embeds),
        ("/similarity", similarity, SimilarityRequest, embeds),
    ]
    for path, endpoint, body_model, listed in routes:
        app.add_api_route(
            path, endpoint, methods=["POST"], openapi_extra=_body_schema(body_model), include_in_schema=listed
        )

    @app.get("/v1/models")
    async def list_models() -> Response:
        return _json(models_list(catalogue))

    @app.get("/v1/models/{model:path}")
    async def retrieve_model(model: str) -> Response:
        return _json(retrieve(catalogue, model))

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(render_prometheus(await all_reports()), media_type=CONTENT_TYPE_LATEST)

    @app.get("/instances")
    async def instances() -> Response:
        return _json(instances_view(await all_reports()))

    async def health() -> Response:
        return _json({"status": "ok", "instance": info.instance})

    for path in HEALTH_PATHS:
        app.add_api_route(path, health, methods=["GET"], include_in_schema=path == HEALTH_PATHS[0])

    @app.get("/info")
    async def model_info() -> Response:
        return _json(
            {
                "model_id": info.model_name,
                "task": info.task,
                "instance": info.instance,
                "dimensions": info.backend.dimensions,
                "pooling": info.pooling,
                "dtype": info.backend.dtype,
                "device": info.backend.device,
                "backend": info.backend.backend,
                "attn_implementation": info.backend.attn_implementation,
                "prompts": info.prompts,
                "default_prompt_name": info.default_prompt_name,
                "max_input_length": info.max_input_tokens,
                "max_batch_tokens": info.max_batch_tokens,
                "max_client_batch_size": info.max_inputs_per_request,
                "max_request_bytes": info.max_request_bytes,
            }
        )

    register_dashboard(app)
    return app
