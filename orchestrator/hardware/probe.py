"""Probe the whole machine: CPU cores and, through NVML, GPUs.

Contract: ``probe_topology`` never raises. A machine without an NVIDIA driver gets ``gpu_note`` ("serving on CPU
pools"); a machine whose driver is installed but broken (not loaded, library/kernel version mismatch, unknown
error, every GPU unreadable) also gets ``gpu_error``: the reason and the
fix, which the planner turns into an error when the config asks for GPUs (gpu-audit W4), instead of serving a MIG
config on CPU pools.
"""

from __future__ import annotations

from orchestrator.hardware.cpu import probe_cpu
from orchestrator.hardware.mig_geometry import with_standard_placements
from orchestrator.hardware.nvml_probe import NvmlUnavailable, probe_gpus
from orchestrator.hardware.topology import Topology


def probe_topology() -> Topology:
    """Discover the hardware. Never raises for a missing or broken GPU.

    Without a usable GPU, ``gpu_note`` is one line "No GPU found: <why>; serving on CPU pools." (the CLI prints it);
    with GPUs it is None. When the driver is installed but NVML fails, ``gpu_error`` says why and what to do.
    Driver versions and NVML's non-fatal warnings (a lost GPU skipped...) are passed through. Placements NVML would
    not list (the call needs root) are filled in from the standard MIG geometry.
    """
    cpu = probe_cpu()
    try:
        report = probe_gpus()
    except NvmlUnavailable as error:
        note = f"No GPU found: {error}; serving on CPU pools."
        # Only "no driver installed" is a CPU machine; any other failure is a GPU machine that is broken.
        return Topology(cpu=cpu, gpu_note=note, gpu_error=None if error.driver_absent else str(error))
    note = error_line = None
    if not report.gpus:
        # Zero devices, or every device NVML counted was skipped: the first warning says why.
        reason = f"no GPU could be read ({report.warnings[0]})" if report.warnings else "NVML reports 0 devices"
        note = f"No GPU found: {reason}; serving on CPU pools."
        if report.warnings:
            error_line = f"{reason}: run nvidia-smi; a lost GPU needs a reset (nvidia-smi -r) or a reboot"
    return Topology(
        cpu=cpu,
        gpus=tuple(with_standard_placements(gpu) for gpu in report.gpus),
        gpu_note=note,
        driver_version=report.driver_version,
        cuda_driver_version=report.cuda_driver_version,
        warnings=report.warnings,
        gpu_error=error_line,
    )
