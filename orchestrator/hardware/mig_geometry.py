"""The standard MIG placement geometry, for when NVML will not list placements (the call needs root).

A100/H100/H200/B200 have 8 memory slices and 7 compute slices; A30 has 4 and 4. A profile spanning ``size`` memory
slices may start at a multiple of ``size``, must end within the memory slices, and must leave room for its compute
slices (start + compute slices <= total compute slices). This reproduces every placement table of mig-nvml.md
section 2 (1g: 0-6; 1g double memory: 0,2,4,6; 2g: 0,2,4; 3g: 0,4; 4g: 0; 7g: 0; A30 1g: 0-3, 2g: 0,2, 4g: 0).
"""

from __future__ import annotations

import dataclasses

from orchestrator.hardware.topology import GpuInfo, MigProfile


def standard_placements(profile: MigProfile, total_compute: int, memory_slices: int, full_memory_mb: int) -> MigProfile:
    """``profile`` with the standard placements and span (memory slices from its share of the full memory)."""
    per_slice_mb = full_memory_mb / memory_slices
    size = max(1, round(profile.memory_mb / per_slice_mb))
    starts = tuple(
        start
        for start in range(0, memory_slices, size)
        if start + size <= memory_slices and start + profile.compute_slices <= total_compute
    )
    return dataclasses.replace(profile, placements=starts, placement_size=size)


def with_standard_placements(gpu: GpuInfo) -> GpuInfo:
    """Fill in placements NVML did not give (non-root); GPUs whose placements are known are returned as they are."""
    if not gpu.profiles or all(p.placements for p in gpu.profiles):
        return gpu
    total_compute = max(p.compute_slices for p in gpu.profiles)
    memory_slices = 8 if total_compute == 7 else total_compute
    full_memory_mb = max(p.memory_mb for p in gpu.profiles)
    profiles = tuple(
        p if p.placements else standard_placements(p, total_compute, memory_slices, full_memory_mb)
        for p in gpu.profiles
    )
    return dataclasses.replace(gpu, profiles=profiles, memory_slice_count=max(gpu.memory_slice_count, memory_slices))
