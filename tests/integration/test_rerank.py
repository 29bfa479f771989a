"""A reranker served by ``orchestrator up`` as a user runs it: one CPU pool, a tiny cross-encoder built here, scores
through the front door equal to sentence-transformers' CrossEncoder."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import free_port, start_up
from tests.tiny_models import build_tiny_cross_encoder

pytestmark = pytest.mark.integration

QUERY = "what is a gpu slice"
DOCUMENTS = ["the cat sits on the mat", "a mig slice of the gpu", "router queue batch", " ".join(["w1"] * 80)]


def post(port: int, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_up_serves_a_reranker_on_v1_rerank(tmp_path: Path) -> None:
    from sentence_transformers import CrossEncoder

    folder = build_tiny_cross_encoder(tmp_path / "tiny-reranker")
    port = free_port()
    config_path = tmp_path / "config.yaml"
    config_path.write_text(
        "version: 1\n"
        f"model: {{name: tiny-reranker, path: {folder}, task: rerank}}\n"
        f"server: {{port: {port}}}\n"
        "mig_instances: [{name: pool-a, type: cpu}]\n"
    )
    log_path = tmp_path / "up.log"
    process = start_up(config_path, log_path)
    try:
        status, body = post(port, "/v1/rerank", {"model": "tiny-reranker", "query": QUERY, "documents": DOCUMENTS})
        assert status == 200, body
        expected = CrossEncoder(str(folder), device="cpu").predict([(QUERY, d) for d in DOCUMENTS])
        assert [item["index"] for item in body["results"]] == sorted(range(4), key=lambda i: -expected[i])
        for item in body["results"]:
            assert item["relevance_score"] == pytest.approx(float(expected[item["index"]]), abs=1e-5)
            assert item["document"] == {"text": DOCUMENTS[item["index"]]}
        assert body["model"] == "tiny-reranker" and body["usage"]["total_tokens"] > 0
        status, error = post(port, "/v1/embeddings", {"input": "a"})
        assert status == 400 and error["error"]["code"] == "WrongTask"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
    output = log_path.read_text()
    assert "backend torch for pool-a" in output and "Traceback" not in output
