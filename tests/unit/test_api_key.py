"""Optional API key: 401 without it, open endpoints by config, the key never stored or logged in clear."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from orchestrator.config import api_key_digest, parse_config
from orchestrator.contracts.errors import ConfigError
from tests.fakes import fake_service
from workers.http_api import build_app

KEY = "s3cr3t-key-for-tests"


def make_client(minilm_folder: Path, open_endpoints: tuple[str, ...]) -> TestClient:
    service = fake_service(minilm_folder, max_request_bytes=100_000, max_queued_texts=64, max_wait_ms=0)
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    return TestClient(build_app(service, api_key_sha256=digest, open_endpoints=open_endpoints))


def test_key_required_on_embedding_routes(minilm_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with make_client(minilm_folder, ("health", "metrics")) as client:
        missing = client.post("/v1/embeddings", json={"input": "x"})
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["error"]["type"] == "authentication_error"
        wrong = client.post("/embed", json={"inputs": "x"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error_type"] == "Unauthorized"
        good = client.post("/embed", json={"inputs": "x"}, headers={"Authorization": f"Bearer {KEY}"})
        assert good.status_code == 200
        assert client.get("/info").status_code == 401
        assert client.get("/health").status_code == 200 and client.get("/metrics").status_code == 200
        assert client.get("/instances").status_code == 200
    assert KEY not in caplog.text


def test_closed_health_and_metrics(minilm_folder: Path) -> None:
    with make_client(minilm_folder, ()) as client:
        assert client.get("/health").status_code == 401 and client.get("/metrics").status_code == 401
        assert client.get("/health", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_key_comes_from_the_environment_as_a_digest() -> None:
    config = parse_config({"server": {"api_key_env": "EMBED_KEY"}, "mig_instances": [{"name": "a"}]})
    assert api_key_digest(config, {"EMBED_KEY": KEY}) == hashlib.sha256(KEY.encode()).hexdigest()
    with pytest.raises(ConfigError, match="server.api_key_env: environment variable EMBED_KEY is unset"):
        api_key_digest(config, {})
    assert api_key_digest(parse_config({"mig_instances": [{"name": "a"}]}), {"EMBED_KEY": KEY}) is None
