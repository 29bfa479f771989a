"""Real Ray Serve, real MiniLM, real HTTP: vectors, the OpenAI client, errors, balancing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import urllib3

from tests.corpus import sentences

http = urllib3.PoolManager(timeout=urllib3.Timeout(total=60))


def post(url: str, body: object | bytes) -> urllib3.BaseHTTPResponse:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.request("POST", url, body=data, headers={"content-type": "application/json"})


@pytest.fixture(scope="module")
def reference(minilm_folder: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_folder), device="cpu")


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_both_routes_match_sentence_transformers(served, reference) -> None:
    url, _, _ = served
    texts = sentences(20, seed=3) + ["short"]
    expected = reference.encode(texts, normalize_embeddings=True)
    openai_shape = post(f"{url}/v1/embeddings", {"input": texts}).json()
    got = np.array([item["embedding"] for item in openai_shape["data"]], dtype=np.float32)
    assert cosine(got, expected).min() >= 0.9999
    tei = np.array(post(f"{url}/embed", {"inputs": texts}).json(), dtype=np.float32)
    assert cosine(tei, expected).min() >= 0.9999


def test_official_openai_client(served, reference) -> None:
    import openai

    url, loaded, _ = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    texts = ["The cat sits on the mat.", "GPU slices serve embeddings."]
    result = client.embeddings.create(model=loaded.model_name, input=texts)  # base64 on the wire by default
    got = np.array([item.embedding for item in result.data], dtype=np.float32)
    assert cosine(got, reference.encode(texts, normalize_embeddings=True)).min() >= 0.9999
    assert result.usage.prompt_tokens > 0
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=loaded.model_name, input=[])
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="x")


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/embeddings", {"input": []}, 400),
        ("/v1/embeddings", {"input": [1.5, "x"]}, 422),
        ("/v1/embeddings", b"{this is not json", 400),
        ("/v1/embeddings", {"input": ["x"] * 65}, 422),
        ("/embed", {"inputs": "word " * 400, "truncate": False}, 422),
        ("/embed", {"inputs": "y" * 300_000}, 413),
        ("/embed", {"inputs": 7}, 422),
    ],
)
def test_bad_inputs_get_json_errors_and_the_service_keeps_serving(served, path, body, status) -> None:
    url, _, _ = served
    response = post(f"{url}{path}", body)
    assert response.status == status, response.data[:300]
    assert "error" in response.json()
    assert post(f"{url}/embed", {"inputs": "still alive"}).status == 200


def test_health_and_info(served) -> None:
    url, loaded, _ = served
    assert http.request("GET", f"{url}/health").json()["status"] == "ok"
    info = http.request("GET", f"{url}/info").json()
    assert info["model_id"] == loaded.model_name and info["dimensions"] == 384 and info["pooling"] == "mean"
    assert info["backend"] == "onnx"  # auto: ONNX Runtime on CPU pools


async def _burst(url: str, texts: list[str], clients: int, requests_each: int) -> list[str]:
    async with aiohttp.ClientSession() as session:

        async def client(offset: int) -> list[str]:
            seen = []
            for n in range(requests_each):
                start = (offset * requests_each + n) * 4 % len(texts)
                async with session.post(f"{url}/v1/embeddings", json={"input": texts[start : start + 4]}) as response:
                    assert response.status == 200
                    await response.read()
                    seen.append(response.headers["x-instance"])
            return seen

        results = await asyncio.gather(*(client(i) for i in range(clients)))
    return [name for chunk in results for name in chunk]


def test_concurrent_load_is_spread_over_both_pools(served) -> None:
    url, _, placement = served
    served_by = asyncio.run(_burst(url, sentences(64, seed=5), clients=8, requests_each=4))
    counts = {name: served_by.count(name) for name in set(served_by)}
    assert set(counts) == {i.name for i in placement.instances}
    assert min(counts.values()) >= len(served_by) // 4, counts


def test_metrics_and_instances_show_every_instance(served) -> None:
    import time

    from prometheus_client.parser import text_string_to_metric_families

    url, _, placement = served
    asyncio.run(_burst(url, sentences(32, seed=9), clients=4, requests_each=2))
    post(f"{url}/embed", {"inputs": []})  # one failure
    names = {i.name for i in placement.instances}
    deadline = time.monotonic() + 30
    while True:  # replicas push about once a second
        view = http.request("GET", f"{url}/instances").json()
        stats = view["instance_stats"]
        if set(stats) == names and sum(s["failures"].get("Empty", 0) for s in stats.values()) >= 1:
            break
        assert time.monotonic() < deadline, view
        time.sleep(0.5)
    response = http.request("GET", f"{url}/metrics")
    assert response.status == 200 and response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.data.decode())}
    served_by = {s.labels["instance"] for s in families["orchestrator_embeddings"].samples if s.value > 0}
    assert served_by == names
    assert all(s.labels["device_kind"] == "cpu" and s.labels["node"] for s in families["orchestrator_up"].samples)
    embedded = sum(s.value for s in families["orchestrator_embeddings"].samples)
    assert embedded >= 32 and sum(v["requests"] for v in stats.values()) >= 9


def test_status_command_prints_every_instance(served) -> None:
    from typer.testing import CliRunner

    from orchestrator.cli import app

    url, _, placement = served
    post(f"{url}/embed", {"inputs": "warm the counters"})
    result = CliRunner().invoke(app, ["status", "--url", url])
    assert result.exit_code == 0, result.output
    for instance in placement.instances:
        assert instance.name in result.output
    assert "emb/s" in result.output and "error rate" in result.output
    assert "instances ready 2/2 (ok)" in result.output
