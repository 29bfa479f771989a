"""One instance type measured in a child process, built exactly as a replica builds its instance.

The parent loads a one-instance config and plans it on this machine (``steps.plan_here``: the same pool cores or
MIG slice ``up`` would give it); the child builds the instance with the worker side's own ``build_instance``
(pinning, backend, calibration, batcher) and measures it through its embedding service (``workers.profile_instance``
says how), printing one JSON line.

The caller plans here and the child (``python -m workers.profile_instance``) builds and measures: the control side
never imports the worker side (tests/unit/test_layers.py), and a process per type keeps a slice's pinning, a pool's
threads and memory from leaking into the next measurement.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

from orchestrator.advisor.measurements import AdvisorError

CHILD_COMMAND = (sys.executable, "-m", "workers.profile_instance")


def measure_in_child(
    config_path: Path,
    requests: list[list[str]],
    low_load: int,
    saturation: int,
    clients: int,
    timeout_s: float,
    load_fractions: tuple[float, ...] = (),
    load_requests: int = 0,
) -> dict[str, Any]:
    """Run the child on ``config_path`` (one instance); returns its JSON. Raises AdvisorError with its last line.

    ``load_fractions``: also measure in-process at these fractions of the saturated rate, ``load_requests`` each
    (the child's ``at_load``)."""
    from orchestrator import steps
    from orchestrator.contracts.errors import OrchestratorError

    try:
        loaded = steps.load(config_path)
        placement, _ = steps.plan_here(loaded)  # the pool cores or MIG slice `up` would give it here
        if steps.onnx_export_needed(loaded, placement):
            steps.export_in_child(config_path)
    except OrchestratorError as error:
        raise AdvisorError(f"measuring {config_path.name}: {error.message}") from None
    spec = steps.replica_spec_here(loaded, placement)
    job = {
        "spec": base64.b64encode(pickle.dumps(spec)).decode(),
        "instance": placement.instances[0].name,
        "requests": requests,
        "low_load": low_load,
        "saturation": saturation,
        "clients": clients,
        "load_fractions": list(load_fractions),
        "load_requests": load_requests,
    }
    try:
        done = subprocess.run(
            list(CHILD_COMMAND),
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
