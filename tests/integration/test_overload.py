"""A burst of ten times what the instances can queue: 429 with Retry-After for what does not fit, correct vectors
for everything accepted, memory bounded, and the service healthy afterwards."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import aiohttp
import numpy as np

from tests.corpus import sentences

REQUESTS = 80
TEXTS_PER_REQUEST = 64  # 80 x 64 = 5120 texts against 2 x 256 queued texts: 10x


async def _burst(url: str, texts: list[str]) -> list[tuple[int, dict, object]]:
    async with aiohttp.ClientSession() as session:

        async def one(n: int) -> tuple[int, dict, object]:
            chunk = texts[n % 8 * TEXTS_PER_REQUEST : n % 8 * TEXTS_PER_REQUEST + TEXTS_PER_REQUEST]
            body = {"input": chunk, "encoding_format": "base64"}
            async with session.post(f"{url}/v1/embeddings", json=body) as response:
                return response.status, dict(response.headers), await response.json()

        return await asyncio.gather(*(one(n) for n in range(REQUESTS)))


async def _memory(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/instances") as response:
        view = await response.json()
    return int(view["memory_usage_bytes"])


def test_burst_of_ten_times_capacity(served, minilm_folder: Path) -> None:
    from sentence_transformers import SentenceTransformer

    url, _, _ = served
    texts = sentences(8 * TEXTS_PER_REQUEST, seed=31)
    memory_before = asyncio.run(_memory(url))
    results = asyncio.run(_burst(url, texts))
    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) > 0 and statuses.count(200) > 0
    for status, headers, body in results:
        if status == 429:
            assert headers["Retry-After"] == "1" and body["error"]["type"] == "rate_limit_error"
    reference = SentenceTransformer(str(minilm_folder), device="cpu").encode(texts, normalize_embeddings=True)
    for n, (status, _, body) in enumerate(results):
        if status != 200:
            continue
        start = n % 8 * TEXTS_PER_REQUEST
        got = np.stack([np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in body["data"]])
        assert got.shape == (TEXTS_PER_REQUEST, 384)
        assert ((got * reference[start : start + TEXTS_PER_REQUEST]).sum(1) >= 0.9999).all()
    assert asyncio.run(_memory(url)) - memory_before < 300 * 2**20  # bounded queues: no pile-up of requests

    async def after() -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}/v1/embeddings", json={"input": "after the burst"}) as response,
        ):
            return response.status

    assert asyncio.run(after()) == 200
