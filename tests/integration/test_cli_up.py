"""`orchestrator up` as a user runs it: a real process, real HTTP, Ctrl-C."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

from tests.conftest import REPO
from tests.integration.conftest import free_port, start_up


def test_up_serves_then_stops_cleanly_on_ctrl_c(tmp_path: Path, minilm_folder: Path) -> None:
    """The shipped config as a user runs it, on the PyTorch backend (the other integration tests use ONNX)."""
    port = free_port()
    config = (REPO / "configs" / "mig_config.yaml").read_text().replace("port: 8000", f"port: {port}")
    config = config.replace("model:\n", "model:\n  backend: torch\n", 1)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(config)
    log_path = tmp_path / "up.log"
    process = start_up(config_path, log_path)
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/embeddings",
            data=json.dumps({"input": ["hello from the CLI"]}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.loads(response.read())
        from sentence_transformers import SentenceTransformer

        expected = SentenceTransformer(str(minilm_folder), device="cpu").encode(["hello from the CLI"])[0]
        got = body["data"][0]["embedding"]
        assert len(got) == 384
        assert sum(a * b for a, b in zip(got, expected, strict=True)) >= 0.9999
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0  # drains and stops in seconds (3 s measured)
    finally:
        if process.poll() is None:
            process.kill()
    output = log_path.read_text()
    assert "No GPU found" in output and "serving on CPU pools" in output
    assert "backend torch for embedding-instance-1, embedding-instance-2" in output
    assert "embedding-instance-1" in output and "embedding-instance-2" in output
    assert "'embedding-instance-3' not placed" in output or "embedding-instance-3" in output
    assert f"http://127.0.0.1:{port}" in output
    assert "Stopped." in output and "Traceback" not in output
