"""Several front-door processes on one port (``server.front_door_workers``): `orchestrator up` as a user runs it."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from tests.integration.conftest import free_port, one_pool_config, start_up

WORKERS = 3


def _front_door(url: str) -> dict:
    return httpx.get(f"{url}/instances", timeout=10).json()["front_door"]


def _embed_on_new_connections(url: str, requests: int, clients: int = 6) -> list[int]:
    """Statuses of ``requests`` embedding calls, each on its own connection (the kernel hands each to a process)."""

    def one(n: int) -> int:
        with httpx.Client(timeout=30) as client:
            return client.post(f"{url}/v1/embeddings", json={"input": [f"text number {n}"]}).status_code

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(requests)))


def test_workers_share_the_port_count_as_one_replace_the_dead_and_stop_together(
    tmp_path: Path, minilm_folder: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = one_pool_config(tmp_path / "config.yaml", port, f", front_door_workers: {WORKERS}")
    up = start_up(config, tmp_path / "up.log")
    try:
        assert f"{WORKERS} front-door processes" in (tmp_path / "up.log").read_text()
        workers = _front_door(url)["workers"]
        assert [w["worker"] for w in workers] == list(range(WORKERS))
        pids = {w["worker"]: w["pid"] for w in workers}
        assert pids[0] == up.pid and all(psutil.pid_exists(pid) for pid in pids.values())

        # Spread: connections land on every process; every answer is right whichever process took it.
        assert _embed_on_new_connections(url, 150) == [200] * 150
        rows = _front_door(url)["workers"]
        assert all(row["requests"] > 0 for row in rows), rows

        # One view: any process answers /metrics with the total of every row, the same whichever one answers.
        totals = set()
        for _ in range(6):
            text = httpx.get(f"{url}/metrics", headers={"connection": "close"}, timeout=10).text
            per_worker = [
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("orchestrator_front_door_worker_requests_total{")
            ]
            total = next(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("orchestrator_front_door_requests_total ")
            )
            assert len(per_worker) == WORKERS and total == sum(per_worker)
            totals.add(total)
        assert len(totals) == 6  # each scrape counts itself: strictly growing totals, never one process's share

        status = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "status", "--url", url],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "250"},
        )
        assert f"{WORKERS} front-door processes (requests " in status.stdout, status.stdout + status.stderr

        # A killed worker is started again in its place; the others serve meanwhile.
        os.kill(pids[1], signal.SIGKILL)
        assert _embed_on_new_connections(url, 30) == [200] * 30
        deadline = time.monotonic() + 30
        while True:
            replaced = {w["worker"]: w["pid"] for w in _front_door(url)["workers"]}
            if replaced[1] not in (0, pids[1]) and psutil.pid_exists(replaced[1]):
                break
            assert time.monotonic() < deadline, replaced
            time.sleep(0.5)
        assert replaced[2] == pids[2]
        assert "front-door worker 1" in (tmp_path / "up.log").read_text()
        every_pid = set(replaced.values())

        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
        assert not [pid for pid in every_pid if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    finally:
        if up.poll() is None:
            up.kill()
    output = (tmp_path / "up.log").read_text()
    assert "Stopped." in output and "Traceback" not in output
