"""CPU discovery: the cores this process is allowed to use."""

from __future__ import annotations

import os

from orchestrator.hardware.topology import CpuTopology


def probe_cpu() -> CpuTopology:
    """Return the cores in this process's affinity mask (falls back to ``os.cpu_count``)."""
    try:
        cores = tuple(sorted(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        cores = tuple(range(os.cpu_count() or 1))
    return CpuTopology(cores=cores or (0,))
