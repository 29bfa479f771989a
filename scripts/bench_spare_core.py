"""Benchmark: one CPU pool on a core of its own, everything else (Ray, Serve, the metrics hub, the front door, the
load generator) on another core. Served/ceiling then shows what the replica itself loses to serving (HTTP, lanes,
batching), without the fixed costs that share its core on a 2-core machine.

1. Ceiling: the ONNX in-process loop of ``scripts/bench.py`` on 1 thread, pinned to the pool's core, before and
   after the service (the better figure is kept, so ratios are conservative).
2. Service: ``orchestrator up`` with one pool of 1 thread, started pinned to the other core; once it answers, every
   thread of the replica is moved to the pool's core (``taskset -a``).
3. Load: 8 and 32 concurrent clients sending requests of 16 corpus sentences, ``--rounds`` times; for each level
   the pool core's idle share and the replica's busiest threads (CPU seconds per wall second).

Usage: ``python scripts/bench_spare_core.py [--requests 120] [--rounds 2]``. Needs 2 cores or more; Linux only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402  (scripts/bench.py: ceiling, config, load generator)

POOL_CORE = 1
OTHER_CORE = 0


def ceiling_on_pool_core(texts: list[str]) -> float:
    """Best in-process ONNX texts/s (batch 16 or 32) on 1 thread, in a child pinned to the pool's core."""
    os.sched_setaffinity(0, {POOL_CORE})  # the child inherits it
    try:
        result = bench.measure_ceiling(texts, 1, "onnx", 1)
    finally:
        os.sched_setaffinity(0, {OTHER_CORE})
    return max(result["16"], result["32"])


def thread_seconds(process: psutil.Process) -> dict[int, float]:
    return {thread.id: thread.user_time + thread.system_time for thread in process.threads()}


def measure_level(url: str, texts: list[str], clients: int, requests: int, replica: psutil.Process) -> dict[str, Any]:
    """Served texts/s at ``clients``, the pool core's idle share and the replica's 3 busiest threads' CPU shares."""
    threads_before = thread_seconds(replica)
    core_before = psutil.cpu_times(percpu=True)[POOL_CORE]
    began = time.perf_counter()
    result = asyncio.run(bench.drive(url, texts, clients, 16, requests))
    wall = time.perf_counter() - began
    core_after = psutil.cpu_times(percpu=True)[POOL_CORE]
    threads_after = thread_seconds(replica)
    shares = sorted(
        ((seconds - threads_before.get(tid, 0.0)) / wall for tid, seconds in threads_after.items()), reverse=True
    )
    return {
        "emb_per_s": result["emb_per_s"],
        "idle": (core_after.idle - core_before.idle) / (sum(core_after) - sum(core_before)),
        "threads": shares[:3],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=120, help="requests per load level")
    parser.add_argument("--rounds", type=int, default=2, help="times each load level is measured")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs 2 cores: one for the pool, one for everything else")
    texts = bench.sentences(1024, seed=11)
    os.sched_setaffinity(0, {OTHER_CORE})
    bench.console.print("measuring the in-process ceiling on the pool's core...")
    ceiling = ceiling_on_pool_core(texts)
    port = bench.free_port()
    url = f"http://127.0.0.1:{port}"
    rows: list[tuple[int, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "spare.yaml"
        bench.write_config(config, port, pools=1, threads=1, batch_size=16, variant="onnx")
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "up", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            cwd=bench.REPO,
        )
        try:
            with bench.console.status("starting the service on the other core..."):
                while not bench.first_embedding(url):
                    if process.poll() is not None:
                        raise SystemExit("the service did not start: run `orchestrator up` with this config to see why")
                    time.sleep(0.2)
            replica = next(p for p in psutil.process_iter() if "ServeReplica" in " ".join(p.cmdline() or []))
            move = ["taskset", "-a", "-p", "-c", str(POOL_CORE), str(replica.pid)]
            subprocess.run(move, check=True, capture_output=True)
            asyncio.run(bench.drive(url, texts, 4, 16, 16))  # warm up
            with bench.console.status("load levels..."):
                for _ in range(args.rounds):
                    for clients in (8, 32):
                        rows.append((clients, measure_level(url, texts, clients, args.requests, replica)))
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
    ceiling = max(ceiling, ceiling_on_pool_core(texts))
    bench.console.print(f"in-process ceiling on 1 thread: {ceiling:.1f} texts/s (better of before/after)")
    for clients, row in rows:
        threads = ", ".join(f"{share:.3f}" for share in row["threads"])
        bench.console.print(
            f"{clients:>2} clients: {row['emb_per_s']:.1f}/s = {row['emb_per_s'] / ceiling:.2f} of the ceiling; "
            f"pool core idle {row['idle']:.3f}; replica's busiest threads {threads} of a core"
        )


if __name__ == "__main__":
    main()
