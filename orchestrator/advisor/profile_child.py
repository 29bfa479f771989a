"""One instance type measured in a child process, built exactly as a replica builds its instance.

The child loads a one-instance config, plans it on this machine (``steps.plan_here``: the same pool cores or MIG
slice ``up`` would give it), builds the instance with the worker side's own ``build_instance`` (pinning, backend,
calibration, batcher) and drives its ``EmbeddingService.embed`` from asyncio: first one request at a time (latency
at low load, which includes tokenising, as a served request does), then ``clients`` requests always outstanding
(throughput at saturation: the batcher merges what waits, as under load). It prints one JSON line.

Why a child, and why code passed with ``-c``: a MIG slice can only be pinned before CUDA starts in the process, and
one process per type keeps a pool's threads and a slice's memory from leaking into the next measurement. The
control side must not import the worker side (tests/unit/test_layers.py), so the worker code runs only there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from orchestrator.advisor.measurements import AdvisorError

CHILD_CODE = r"""
import asyncio, json, sys, time
from pathlib import Path
from orchestrator import steps
from orchestrator.contracts.replica_spec import ReplicaSpec
job = json.loads(sys.stdin.read())
loaded = steps.load(Path(job["config"]))
placement, _ = steps.plan_here(loaded)
if steps.onnx_export_needed(loaded, placement):
    steps.export_in_child(Path(job["config"]))
instance = placement.instances[0]
spec = ReplicaSpec.from_config(
    placement, None, {"model": loaded.config.model, "server": loaded.config.server},
    model_folder=str(loaded.model_folder), model_name=loaded.model_name, api_key_sha256=None, lane_token=None)
from workers.assembly import build_instance
service = build_instance(spec, instance).service
requests = job["requests"]

async def main():
    for body in requests[:3]:
        await service.embed(body)
    low, tokens = [], 0
    for body in requests[: job["low_load"]]:
        began = time.perf_counter()
        result = await service.embed(body)
        low.append(time.perf_counter() - began)
        tokens += result.prompt_tokens
    queue = iter(requests[: job["saturation"]])
    done = [0, 0]

    async def client():
        for body in queue:
            await service.embed(body)
            done[0] += 1
            done[1] += len(body)

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(job["clients"])))
    elapsed = time.perf_counter() - began
    texts = sum(len(b) for b in requests[: job["low_load"]])
    gpu = instance.gpu
    print(json.dumps({
        "low_load_s": low, "saturation_rps": done[0] / elapsed, "texts_per_s": done[1] / elapsed,
        "tokens_per_text": tokens / max(texts, 1), "dimensions": service.info.backend.dimensions,
        "backend": instance.backend, "threads": instance.threads, "capacity": instance.capacity,
        "profile": instance.profile, "device": instance.device,
        "sm_count": gpu.sm_count if gpu else None, "memory_mb": gpu.memory_mb if gpu else None,
        "gpu_name": gpu.gpu_name if gpu else None}))

asyncio.run(main())
"""


def measure_in_child(
    config_path: Path, requests: list[list[str]], low_load: int, saturation: int, clients: int, timeout_s: float
) -> dict[str, Any]:
    """Run the child on ``config_path`` (one instance); returns its JSON. Raises AdvisorError with its last line."""
    job = {
        "config": str(config_path),
        "requests": requests,
        "low_load": low_load,
        "saturation": saturation,
        "clients": clients,
    }
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD_CODE],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, "COLUMNS": "500"},
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise AdvisorError(f"measuring {config_path.name} took over {timeout_s:.0f} s: lower --requests") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = [line for line in done.stderr.splitlines() if line.strip()][-1:] or [f"exit code {done.returncode}"]
        raise AdvisorError(f"measuring {config_path.name} failed: {tail[0]}")
    return dict(json.loads(lines[-1]))
