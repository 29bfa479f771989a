"""The rerank routes' contracts: the request bodies of TEI's ``/rerank`` and of the ``/v1/rerank`` shape Cohere, Jina
and vLLM share, and their answers, computed by a ``RerankService``. HTTP itself (reading, errors, metrics, headers)
stays in ``workers/http_api.py``, which calls ``tei_rerank`` and ``v1_rerank`` with a parsed body.

* TEI: ``{query, texts, truncate?, truncation_direction?, raw_scores?, return_text?}`` ->
  ``[{index, score, text?}]``, best first (``text`` only with ``return_text``).
* Cohere / Jina / vLLM: ``{model?, query, documents: [text | {text}], top_n?, return_documents?}`` ->
  ``{id, model, results: [{index, relevance_score, document?: {text}}], usage: {prompt_tokens, total_tokens}}``,
  best first, the ``top_n`` best only (absent or 0: all, as vLLM reads 0). ``document`` is returned unless
  ``return_documents`` is false: vLLM always returns it, Jina by default, and a Cohere client ignores it. ``truncate``
  is an extension, as on ``/v1/embeddings``.

Equal scores keep the documents' order. Bodies are validated strictly, as the embedding routes' are: unknown fields
and wrong types are refused, never coerced.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from orchestrator.contracts.errors import BackendFailure, EmptyInput, ValidationFailed, WrongTask
from workers.rerank_service import RerankResult, RerankService


def wrong_task(model_name: str, task: str) -> WrongTask:
    """The error a ``task`` instance serving ``model_name`` answers on the other task's routes."""
    if task == "rerank":
        return WrongTask(
            f"{model_name!r} is a reranker (model.task: rerank): it scores (query, document) pairs and does not "
            "embed; POST /rerank or /v1/rerank"
        )
    return WrongTask(
        f"{model_name!r} is an embedding model (model.task: embed): it does not rerank; POST /v1/embeddings or "
        "/embed, or serve a cross-encoder with model.task: rerank"
    )


class TEIRerankRequest(BaseModel):
    """TEI's ``/rerank`` request."""

    model_config = ConfigDict(extra="forbid")

    query: StrictStr
    texts: list[StrictStr]
    truncate: bool | None = None
    truncation_direction: Literal["right", "left", "Right", "Left"] = "right"
    raw_scores: bool = False
    return_text: bool = False
    model: StrictStr | None = Field(None, description="Extension: the served model (name or alias) to rerank with.")


class RerankDocument(BaseModel):
    """A document given as an object (Cohere's and Jina's form); only its text is read."""

    model_config = ConfigDict(extra="forbid")

    text: StrictStr


class RerankRequest(BaseModel):
    """The ``/v1/rerank`` request of Cohere, Jina and vLLM."""

    model_config = ConfigDict(extra="forbid")

    query: StrictStr
    documents: list[StrictStr | RerankDocument]
    model: StrictStr | None = None
    top_n: Annotated[StrictInt, Field(ge=0)] | None = Field(None, description="The best n only; absent or 0: all.")
    return_documents: bool = True
    truncate: bool | None = Field(
        None,
        description="Extension (TEI's): cut pairs over the model's limit (true) or refuse them (false); default: the "
        "server's auto_truncate.",
    )


def _check_count(documents: list[Any], field: str, limit: int) -> None:
    if not documents:
        raise EmptyInput(f"{field} is empty; send at least one document to rank")
    if len(documents) > limit:
        raise ValidationFailed(f"{len(documents)} {field} is more than the limit of {limit} per request")


def best_first(scores: np.ndarray) -> list[int]:
    """Document indices by descending score, equal scores in input order; BackendFailure for a NaN score."""
    if np.isnan(scores).any():
        raise BackendFailure("the model returned a NaN score")
    return sorted(range(len(scores)), key=lambda index: (-float(scores[index]), index))


async def tei_rerank(service: RerankService, body: TEIRerankRequest) -> tuple[list[dict[str, Any]], RerankResult]:
    """TEI's answer to ``body`` (ranks, best first) and the result behind it."""
    _check_count(body.texts, "texts", service.info.max_inputs_per_request)
    result = await service.rerank(
        body.query,
        body.texts,
        truncate=body.truncate,
        direction=body.truncation_direction.lower(),
        raw_scores=body.raw_scores,
    )
    ranks = []
    for index in best_first(result.scores):
        rank: dict[str, Any] = {"index": index, "score": float(result.scores[index])}
        if body.return_text:
            rank["text"] = body.texts[index]
        ranks.append(rank)
    return ranks, result


async def v1_rerank(service: RerankService, body: RerankRequest) -> tuple[dict[str, Any], RerankResult]:
    """The ``/v1/rerank`` answer to ``body`` and the result behind it (the caller has checked ``body.model``)."""
    _check_count(body.documents, "documents", service.info.max_inputs_per_request)
    texts = [document if isinstance(document, str) else document.text for document in body.documents]
    result = await service.rerank(body.query, texts, truncate=body.truncate)
    order = best_first(result.scores)
    if body.top_n:
        order = order[: body.top_n]
    results = []
    for index in order:
        item: dict[str, Any] = {"index": index, "relevance_score": float(result.scores[index])}
        if body.return_documents:
            item["document"] = {"text": texts[index]}
        results.append(item)
    payload = {
        "id": f"rerank-{uuid.uuid4().hex}",
        "model": service.info.model_name,
        "results": results,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
    return payload, result
