"""The ingress benchmark's service (issue 22): ``orchestrator up`` on the model-less marker folder answers
placeholder vectors of the model's dimension through the front door, under a name no one can take for a model."""

from __future__ import annotations

import base64
import json
import signal
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from scripts.bench_ingress import BERT_SHAPE, bench_config, write_bench_model, write_config
from tests.integration.conftest import free_port, start_up
from workers.backends.null_backend import SERVED_NAME, NullBackend


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_up_on_the_marker_folder_answers_placeholder_vectors(tmp_path: Path) -> None:
    port = free_port()
    folder = write_bench_model(tmp_path / "ingress-bench", ["hello", "world"])
    config_path = write_config(tmp_path / "ingress.yaml", bench_config(port, folder, pools=2, threads=1))
    log_path = tmp_path / "up.log"
    process = start_up(config_path, log_path)
    dimensions = BERT_SHAPE["hidden_size"]
    try:
        url = f"http://127.0.0.1:{port}"
        texts = ["hello world", "a longer text of seven words here", "x"]
        answer = _post(f"{url}/v1/embeddings", {"input": texts})
        assert answer["model"] == SERVED_NAME
        vectors = [item["embedding"] for item in answer["data"]]
        assert [len(vector) for vector in vectors] == [dimensions] * 3
        # The fixed table's row of each text's token count ([CLS] and [SEP] included): unit length, deterministic.
        expected = NullBackend(dimensions).embed([[0] * 4, [0] * 9, [0] * 3])
        assert np.allclose(np.array(vectors), expected, atol=1e-6)
        assert answer["usage"]["prompt_tokens"] == 4 + 9 + 3

        named = _post(f"{url}/v1/embeddings", {"input": ["x"], "model": SERVED_NAME, "encoding_format": "base64"})
        assert len(base64.b64decode(named["data"][0]["embedding"])) == 4 * dimensions
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert "Traceback" not in log_path.read_text()
