"""Reading a request body as the routes need it: whole, bounded by ``max_request_bytes``, parsed once with orjson,
validated strictly against its schema, with the problems named in one line (the first three)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ValidationError

from orchestrator.contracts.errors import EmptyInput, MalformedRequest, ValidationFailed
from orchestrator.contracts.forwarding import BoundedBody
from workers.service import InstanceService

if TYPE_CHECKING:  # fastapi loads with the app (http_api.py), not with this module
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError


def first_validation_problem(error: ValidationError | RequestValidationError) -> str:
    problems = []
    for item in error.errors()[:3]:
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        message = "unknown field" if item.get("type") == "extra_forbidden" else item.get("msg", "invalid")
        problems.append(f"{where or 'body'}: {message}")
    return "; ".join(problems)


async def read_json_body(request: Request, max_bytes: int) -> Any:
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


def parse(model: type[BaseModel], payload: Any) -> Any:
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        raise ValidationFailed(first_validation_problem(error)) from None


def openai_inputs(raw: str | list[str] | list[int] | list[list[int]]) -> tuple[list[Any], bool]:
    """The inputs as a list (one text, or one id list, becomes a list of one) and whether they are token ids."""
    inputs: list[Any] = [raw] if isinstance(raw, str) else list(raw)
    pre_tokenized = bool(inputs) and isinstance(inputs[0], (int, list))
    if pre_tokenized and isinstance(inputs[0], int):
        inputs = [inputs]
    return inputs, pre_tokenized


def check_count(service: InstanceService, inputs: list[Any]) -> None:
    if not inputs:
        raise EmptyInput("input is empty; send at least one text")
    limit = service.info.max_inputs_per_request
    if len(inputs) > limit:
        raise ValidationFailed(f"{len(inputs)} inputs is more than the limit of {limit} per request")
