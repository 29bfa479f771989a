"""A replica's process killed (SIGKILL) under load: clients see no failure, requests that were in flight on it are
retried on the other instance, Serve restarts it, and /health and the metrics show the dip and the recovery."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import time
from pathlib import Path

import aiohttp
import numpy as np

from tests.corpus import sentences

CLIENTS = 6
TEXTS_PER_REQUEST = 8
RECOVERY_TIMEOUT_S = 120.0


def _replica_pids() -> dict[str, int]:
    """Serve replica actor name -> its worker process id (through Ray's GCS, as an operator's script would)."""
    import ray

    pids = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if "EmbeddingReplica" in entry["name"]:
            actor = ray.get_actor(entry["name"], namespace=entry["namespace"])
            pids[entry["name"]] = ray.get(actor.__ray_call__.remote(lambda _self: os.getpid()), timeout=30)
    return pids


def _counter(metrics_text: str, name: str) -> float:
    match = re.search(rf"^{name} ([0-9.e+]+)$", metrics_text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


async def _load_through_a_kill(url: str, texts: list[str]) -> tuple[list[tuple[int, int, object, str]], list[dict]]:
    """Clients send requests while one replica is killed; returns (results, /health answers seen meanwhile)."""
    results: list[tuple[int, int, object, str]] = []
    health: list[dict] = []
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:

        async def client(k: int) -> None:
            n = k
            while not stop.is_set():
                start = n * TEXTS_PER_REQUEST % len(texts)
                body = {"input": texts[start : start + TEXTS_PER_REQUEST], "encoding_format": "base64"}
                async with session.post(f"{url}/v1/embeddings", json=body) as response:
                    results.append((start, response.status, await response.json(), response.headers["x-instance"]))
                n += CLIENTS

        async def watch_and_kill() -> None:
            await asyncio.sleep(2.0)  # both instances busy
            pids = await asyncio.to_thread(_replica_pids)
            assert len(pids) == 2, pids
            os.kill(next(iter(pids.values())), signal.SIGKILL)
            killed_at = time.monotonic()
            while time.monotonic() - killed_at < RECOVERY_TIMEOUT_S:
                await asyncio.sleep(0.5)
                async with session.get(f"{url}/health") as response:
                    health.append({**await response.json(), "t": round(time.monotonic() - killed_at, 1)})
                dipped = any(answer["status"] == "degraded" for answer in health)
                if dipped and health[-1]["instances_ready"] == 2 and health[-1]["status"] == "ok":
                    break
            await asyncio.sleep(2.0)  # some load on the recovered pair
            stop.set()

        await asyncio.gather(watch_and_kill(), *(client(k) for k in range(CLIENTS)))
    return results, health


def test_killed_replica_loses_no_request_and_recovers(served, minilm_folder: Path) -> None:
    from sentence_transformers import SentenceTransformer

    url, _, placement = served

    async def metrics() -> str:
        async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
            return await response.text()

    before = asyncio.run(metrics())
    texts = sentences(96, seed=47)
    results, health = asyncio.run(_load_through_a_kill(url, texts))
    after = asyncio.run(metrics())

    statuses = [status for _, status, _, _ in results]
    assert set(statuses) == {200}, {status: statuses.count(status) for status in set(statuses)}
    reference = SentenceTransformer(str(minilm_folder), device="cpu").encode(texts, normalize_embeddings=True)
    for start, _, body, _ in results:
        got = np.stack([np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in body["data"]])
        assert ((got * reference[start : start + TEXTS_PER_REQUEST]).sum(1) >= 0.9999).all()

    # The dip and the recovery, as an operator sees them.
    assert any(answer["status"] == "degraded" and answer["instances_ready"] < 2 for answer in health), health
    final = health[-1]
    assert (final["status"], final["instances_ready"], final["instances_planned"]) == ("ok", 2, 2)
    losses = _counter(after, "orchestrator_front_door_instance_losses_total") - _counter(
        before, "orchestrator_front_door_instance_losses_total"
    )
    retries = _counter(after, "orchestrator_front_door_retries_total") - _counter(
        before, "orchestrator_front_door_retries_total"
    )
    assert losses >= 1 and retries == losses  # every request caught on the dead replica was sent again, once
    # The replacement took the dead one's place: both instances answered after the recovery.
    names = {instance.name for instance in placement.instances}
    assert {instance for _, _, _, instance in results[-2 * CLIENTS :]} == names
