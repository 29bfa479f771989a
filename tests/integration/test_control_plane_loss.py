"""`orchestrator up` losing Ray's control plane: its GCS or its raylet killed under it, as an unlucky operator (or
the OOM killer) would. Before: with the GCS gone `up` served 60 s and then died without a drain, leaving Ray agents
behind; with the raylet gone `/health` said "ok 2/2" and Ctrl-C hung for minutes. Now `/health` answers 503 with
the reason within seconds, `up` drains and exits 1 with one line saying what to do, and no process outlives it."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import free_port, one_pool_config, start_up


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
    config_path = one_pool_config(tmp_path / "config.yaml", port)
    log_path = tmp_path / "up.log"
    up = start_up(config_path, log_path)
    tree: list[psutil.Process] = []
    try:
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
