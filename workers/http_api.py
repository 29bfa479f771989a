"""The HTTP API of an instance: OpenAI ``/v1/embeddings``, TEI ``/embed``, ``/health`` and ``/info``.

One FastAPI app per replica (the front door hands it the request after our router picked the replica, so there is no
extra hop). Bodies are read with a size limit and parsed once with orjson; answers are serialised once with orjson
and returned as raw ``Response`` objects, which skips FastAPI's slow ``jsonable_encoder``. Every error, ours or the
framework's, goes through ``error_response``: OpenAI's error shape under ``/v1``, TEI's elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.contracts.errors import (
    EmptyInput,
    MalformedRequest,
    NotFound,
    OrchestratorError,
    Unauthorized,
    ValidationFailed,
    error_body,
)
from orchestrator.contracts.forwarding import BoundedBody
from orchestrator.metrics import InstanceReport, instances_view, render_prometheus
from workers.dashboard import register_dashboard
from workers.service import EmbeddingService, EmbedResult

ReportsSource = Callable[[], Awaitable[list[InstanceReport]]]

logger = logging.getLogger(__name__)

JSON = "application/json"


class OpenAIEmbeddingRequest(BaseModel):
    """OpenAI's embeddings request (``input`` may be text, texts, token ids or lists of token ids)."""

    model_config = ConfigDict(extra="forbid")

    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    model: StrictStr | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[StrictInt, Field(gt=0)] | None = None
    user: StrictStr | None = None
    prompt_name: StrictStr | None = Field(
        None, description="Extension: a named prompt of the model (e.g. 'query' for Qwen3-Embedding)."
    )


class TEIEmbedRequest(BaseModel):
    """TEI's ``/embed`` request."""

    model_config = ConfigDict(extra="forbid")

    inputs: StrictStr | list[StrictStr]
    normalize: bool = True
    truncate: bool | None = None
    truncation_direction: Literal["right", "left", "Right", "Left"] = "right"
    prompt_name: StrictStr | None = None
    dimensions: Annotated[StrictInt, Field(gt=0)] | None = None


def _json(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status_code, headers, JSON)


def error_response(path: str, error: OrchestratorError) -> Response:
    """The one mapping from an error to its HTTP answer (status, body shape, headers)."""
    return _json(error_body(path, error), error.status_code, error.headers())


def _first_validation_problem(error: ValidationError | RequestValidationError) -> str:
    problems = []
    for item in error.errors()[:3]:
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        message = "unknown field" if item.get("type") == "extra_forbidden" else item.get("msg", "invalid")
        problems.append(f"{where or 'body'}: {message}")
    return "; ".join(problems)


async def _read_json_body(request: Request, max_bytes: int) -> Any:
    bounded = BoundedBody(max_bytes, request.headers.get("content-length"))
    async for chunk in request.stream():
        bounded.add(chunk)
    body = bounded.bytes()
    if not body:
        raise MalformedRequest("the request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise MalformedRequest(f"the body is not valid JSON: {error}") from None


def _parse(model: type[BaseModel], payload: Any) -> Any:
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        raise ValidationFailed(_first_validation_problem(error)) from None


def _check_count(service: EmbeddingService, inputs: list[Any]) -> None:
    if not inputs:
        raise EmptyInput("input is empty; send at least one text")
    limit = service.info.max_inputs_per_request
    if len(inputs) > limit:
        raise ValidationFailed(f"{len(inputs)} inputs is more than the limit of {limit} per request")


def _timing_headers(service: EmbeddingService, result: EmbedResult) -> dict[str, str]:
    return {
        "x-instance": service.info.instance,
        "x-compute-tokens": str(result.prompt_tokens),
        "x-queue-time": f"{result.queue_s * 1000:.2f}",
        "x-inference-time": f"{result.inference_s * 1000:.2f}",
    }


def _with_result(response: Response, result: EmbedResult) -> Response:
    response.embed_result = result  # type: ignore[attr-defined]  # read by _instrumented for the metrics
    return response


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {JSON: {"schema": model.model_json_schema()}}}}


async def _instrumented(service: EmbeddingService, route: str, handle: Callable[[], Awaitable[Response]]) -> Response:
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
    result: EmbedResult | None = getattr(response, "embed_result", None)
    if result is None:
        metrics.request_finished(time.perf_counter() - started)
    else:
        metrics.request_finished(
            time.perf_counter() - started,
            embeddings=len(result.vectors),
            tokens=result.prompt_tokens,
            queue_s=result.queue_s,
            inference_s=result.inference_s,
        )
    return response


OPEN_PATHS = {"health": ("/health",), "metrics": ("/metrics", "/instances", "/dashboard")}


def requires_key(path: str, open_endpoints: tuple[str, ...]) -> bool:
    """True unless ``path`` belongs to an endpoint group left open by the config."""
    return not any(path.startswith(prefix) for group in open_endpoints for prefix in OPEN_PATHS.get(group, ()))


def key_matches(header: str | None, key_sha256: str) -> bool:
    """``Authorization: Bearer <key>`` whose SHA-256 equals the configured digest (constant-time compare)."""
    if not header or not header.lower().startswith("bearer "):
        return False
    digest = hashlib.sha256(header[7:].strip().encode()).hexdigest()
    return hmac.compare_digest(digest, key_sha256)


def build_app(
    service: EmbeddingService,
    reports: ReportsSource | None = None,
    api_key_sha256: str | None = None,
    open_endpoints: tuple[str, ...] = ("health", "metrics"),
) -> FastAPI:
    """The ASGI app of one instance, bound to its embedding service.

    ``reports`` returns every instance's metrics (the metrics hub); without it, only this instance is shown.
    With ``api_key_sha256``, every endpoint but the ``open_endpoints`` groups needs ``Authorization: Bearer <key>``
    (401 otherwise); replicas only ever hold the key's digest, and neither the key nor the header is logged.
    """
    # redirect_slashes=False: "/health/" is a JSON 404, not a redirect built from the client's Host header.
    app = FastAPI(title="mig-orchestrator", version="0.1.0", docs_url=None, redoc_url=None, redirect_slashes=False)
    info = service.info

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
        return error_response(request.url.path, ValidationFailed(_first_validation_problem(error)))

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

    @app.post("/v1/embeddings", openapi_extra=_body_schema(OpenAIEmbeddingRequest))
    async def openai_embeddings(request: Request) -> Response:
        return await _instrumented(service, "/v1/embeddings", lambda: _openai(request))

    async def _openai(request: Request) -> Response:
        body: OpenAIEmbeddingRequest = _parse(
            OpenAIEmbeddingRequest, await _read_json_body(request, info.max_request_bytes)
        )
        if body.model is not None and body.model.lower() != info.model_name.lower():
            raise NotFound(f"model {body.model!r} is not served here; this endpoint serves {info.model_name!r}")
        raw = body.input
        if isinstance(raw, str):
            inputs: list[Any] = [raw]
        else:
            inputs = list(raw)
        pre_tokenized = bool(inputs) and isinstance(inputs[0], (int, list))
        if pre_tokenized and isinstance(inputs[0], int):
            inputs = [inputs]
        _check_count(service, inputs)
        if any(len(item) == 0 for item in inputs):
            raise EmptyInput("input contains an empty text; every input needs at least one character or token")
        if pre_tokenized and body.prompt_name is not None:
            raise ValidationFailed("prompt_name cannot be combined with token-id input: put the prompt's tokens in")
        result = await service.embed(
            inputs,
            pre_tokenized=pre_tokenized,
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

    @app.post("/embed", openapi_extra=_body_schema(TEIEmbedRequest))
    async def tei_embed(request: Request) -> Response:
        return await _instrumented(service, "/embed", lambda: _tei(request))

    async def _tei(request: Request) -> Response:
        body: TEIEmbedRequest = _parse(TEIEmbedRequest, await _read_json_body(request, info.max_request_bytes))
        inputs = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
        _check_count(service, inputs)
        if any(not text for text in inputs):
            raise EmptyInput("inputs contains an empty text; every input needs at least one character")
        result = await service.embed(
            inputs,
            truncate=bool(body.truncate),
            direction=body.truncation_direction.lower(),
            normalize=body.normalize,
            dimensions=body.dimensions,
            prompt_name=body.prompt_name,
        )
        return _with_result(_json(result.vectors, headers=_timing_headers(service, result)), result)

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(render_prometheus(await all_reports()), media_type=CONTENT_TYPE_LATEST)

    @app.get("/instances")
    async def instances() -> Response:
        return _json(instances_view(await all_reports()))

    @app.get("/health")
    async def health() -> Response:
        return _json({"status": "ok", "instance": info.instance})

    @app.get("/info")
    async def model_info() -> Response:
        return _json(
            {
                "model_id": info.model_name,
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
