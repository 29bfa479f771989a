"""Ctrl-C at any point of ``orchestrator up``'s start-up: it stops quietly, exits 130 and leaves no process behind.

The interrupt is sent as a terminal sends it, to the whole foreground process group, at two points: once Ray's
raylet runs (Serve not deployed yet) and once the replicas are loading the model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.serving.control_plane import descendants
from tests.conftest import REPO
from tests.integration.conftest import free_port, one_pool_config

pytestmark = pytest.mark.integration


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.parametrize("point", ["raylet", "ServeReplica"])
def test_ctrl_c_during_start_up_stops_quietly_and_leaves_no_process(tmp_path: Path, point: str) -> None:
    config = one_pool_config(tmp_path / "c.yaml", free_port())
    log_path = tmp_path / "up.log"
    with log_path.open("w") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "up", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "COLUMNS": "200"},
            start_new_session=True,  # its own process group, as a shell gives a foreground job
        )
    seen: set[int] = set()
    deadline = time.monotonic() + 180
    try:
        while not any(point in command_line(pid) for pid in seen if running(pid)):
            assert up.poll() is None and time.monotonic() < deadline, log_path.read_text()
            seen |= set(descendants(up.pid))
            time.sleep(0.05)
        seen |= set(descendants(up.pid))
        os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        code = up.wait(timeout=60)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
    output = log_path.read_text()
    assert code == 130, output
    assert "Stopped." in output and "Traceback" not in output, output
    assert not [line for line in output.splitlines() if " INFO " in line or line.startswith("INFO")], output
    time.sleep(1.0)  # a process signalled by the cleanup may take a moment to go
    left = {pid: command_line(pid) for pid in seen if running(pid)}
    assert not left, f"left running after the interrupt: {left}"
