"""``python -m workers.profile_instance``: one planned instance built exactly as its replica builds it
(``assembly.build_instance``: pinning, backend, calibration, batcher), then measured through its embedding service.

Reads a job from stdin: ``spec`` (a base64 pickle of the ``ReplicaSpec``, planned by the caller on this machine),
``instance`` (its name), ``requests`` (lists of texts), ``low_load``, ``saturation`` and ``clients`` (request
counts). It measures latency one request at a time (tokenising included, as a served request pays it), then
throughput with ``clients`` requests always outstanding (the batcher merges what waits, as under load), and prints
one JSON line. With ``load_fractions`` (and ``load_requests``) it then sends Poisson arrivals at each fraction of the
saturated rate and reports every answered request's send time, latency and the batcher's queue and inference times
(``at_load``): the service times at load that ``orchestrator.advisor.load_points`` reads (on a GPU, where the served
check does not run). A process of its own per instance: a MIG slice can be pinned only before CUDA starts, and a
pool's threads or a slice's memory must not leak into the next measurement.
"""

from __future__ import annotations

import asyncio
import base64
import json
import pickle
import random
import sys
import time
from typing import TYPE_CHECKING, Any

from orchestrator.contracts.replica_spec import ReplicaSpec

if TYPE_CHECKING:
    from workers.service import EmbeddingService


async def measure(job: dict[str, Any]) -> dict[str, Any]:
    from workers.assembly import build_instance

    spec: ReplicaSpec = pickle.loads(base64.b64decode(job["spec"]))  # written by our own parent, never by a client
    instance = next(i for i in spec.plan.instances if i.name == job["instance"])
    service = build_instance(spec, instance).service
    requests: list[list[str]] = job["requests"]
    for body in requests[:3]:  # warm-up
        await service.embed(body)
    low, tokens = [], 0
    for body in requests[: job["low_load"]]:
        began = time.perf_counter()
        result = await service.embed(body)
        low.append(time.perf_counter() - began)
        tokens += result.prompt_tokens
    queue = iter(requests[: job["saturation"]])
    done = [0, 0]
    done_s: list[float] = []  # when each saturated request finished: the service-time spread under load

    async def client() -> None:
        for body in queue:
            await service.embed(body)
            done[0] += 1
            done[1] += len(body)
            done_s.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(job["clients"])))
    elapsed = time.perf_counter() - began
    at_load = [
        await open_loop(service, requests[: job.get("load_requests", 0)], fraction * done[0] / elapsed, seed=41 + n)
        for n, fraction in enumerate(job.get("load_fractions") or ())
    ]
    texts = sum(len(body) for body in requests[: job["low_load"]])
    gpu = instance.gpu
    return {
        "low_load_s": low,
        "saturation_rps": done[0] / elapsed,
        "saturation_done_s": sorted(done_s),
        "texts_per_s": done[1] / elapsed,
        "at_load": at_load,
        "tokens_per_text": tokens / max(texts, 1),
        "dimensions": service.info.backend.dimensions,
        "backend": instance.backend,
        "threads": instance.threads,
        "capacity": instance.capacity,
        "profile": instance.profile,
        "device": instance.device,
        "sm_count": gpu.sm_count if gpu else None,
        "memory_mb": gpu.memory_mb if gpu else None,
        "gpu_name": gpu.gpu_name if gpu else None,
    }


async def open_loop(service: EmbeddingService, requests: list[list[str]], rate: float, seed: int) -> dict[str, Any]:
    """Poisson arrivals at ``rate``: the realised rate and, per answered request, ``[sent, latency, queue, inference]``
    in seconds (sent from the start; latency from the scheduled arrival)."""
    rng = random.Random(seed)
    records: list[list[float]] = []

    async def one(body: list[str], scheduled: float) -> None:
        result = await service.embed(body)
        records.append([scheduled, time.perf_counter() - began - scheduled, result.queue_s, result.inference_s])

    began = time.perf_counter()
    scheduled = 0.0
    tasks = []
    for body in requests:
        scheduled += rng.expovariate(rate)
        await asyncio.sleep(max(0.0, scheduled - (time.perf_counter() - began)))
        tasks.append(asyncio.create_task(one(body, scheduled)))
    await asyncio.gather(*tasks, return_exceptions=True)  # a failed request is left out, not the measurement
    return {"rate": len(requests) / scheduled if scheduled > 0 else 0.0, "records": sorted(records)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(measure(json.loads(sys.stdin.read())))))
