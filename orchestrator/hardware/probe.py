"""Probe the whole machine: CPU cores and, through NVML, GPUs."""

from __future__ import annotations

from orchestrator.hardware.cpu import probe_cpu
from orchestrator.hardware.mig_geometry import with_standard_placements
from orchestrator.hardware.nvml_probe import NvmlUnavailable, probe_gpus
from orchestrator.hardware.topology import Topology


def probe_topology() -> Topology:
    """Discover the hardware. Never raises for a missing GPU.

    Without a usable GPU, ``gpu_note`` is one line "No GPU found: <why>; serving on CPU pools." (the CLI prints it);
    with GPUs it is None. Driver versions and NVML's non-fatal warnings (a lost GPU skipped...) are passed through.
    Placements NVML would not list (the call needs root) are filled in from the standard MIG geometry.
    """
    cpu = probe_cpu()
    try:
        report = probe_gpus()
    except NvmlUnavailable as error:
        return Topology(cpu=cpu, gpu_note=f"No GPU found: {error}; serving on CPU pools.")
    note = None
    if not report.gpus:
        # Zero devices, or every device NVML counted was skipped: the first warning says why.
        reason = f"no GPU could be read ({report.warnings[0]})" if report.warnings else "NVML reports 0 devices"
        note = f"No GPU found: {reason}; serving on CPU pools."
    return Topology(
        cpu=cpu,
        gpus=tuple(with_standard_placements(gpu) for gpu in report.gpus),
        gpu_note=note,
        driver_version=report.driver_version,
        cuda_driver_version=report.cuda_driver_version,
        warnings=report.warnings,
    )
