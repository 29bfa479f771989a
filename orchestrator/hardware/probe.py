"""Probe the whole machine: CPU cores and, through NVML, GPUs."""

from __future__ import annotations

from orchestrator.hardware.cpu import probe_cpu
from orchestrator.hardware.nvml_probe import NvmlUnavailable, probe_gpus
from orchestrator.hardware.topology import Topology


def probe_topology() -> Topology:
    """Discover the hardware. Never raises for a missing GPU: the reason goes to ``Topology.gpu_note``."""
    cpu = probe_cpu()
    try:
        gpus = probe_gpus()
    except NvmlUnavailable as error:
        return Topology(cpu=cpu, gpu_note=f"No GPU found: {error}; serving on CPU pools.")
    if not gpus:
        return Topology(cpu=cpu, gpu_note="No GPU found: NVML reports 0 devices; serving on CPU pools.")
    names = ", ".join(sorted({gpu.name for gpu in gpus}))
    return Topology(
        cpu=cpu,
        gpus=gpus,
        gpu_note=f"Found {len(gpus)} GPU(s) ({names}); MIG placement is not available in this version, "
        "serving on CPU pools.",
    )
