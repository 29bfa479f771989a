"""What already occupies a MIG GPU: its GPU instances (with placements) and who uses each MIG device.

Contract: ``read_gpu_instances`` returns the GPU instances, or None when NVML will not list them (not root, MIG off,
an old driver): "unknown", never "none". ``slice_usage`` returns a MIG device's processes and memory in use; each
unreadable part is None/empty. Only a lost GPU raises (``NvmlCallError``).

Why: a GPU instance without a compute instance is no MIG device yet holds its memory slices (gpu-audit W10), and a
slice another process uses is not free (W2). The per-MIG-handle process list needs no root, unlike the aggregate
list of a MIG parent (nvml.h; C2). Memory in use is NVML's v2 ``used``, which leaves out the driver's reservation
that v1 counts (C3), so an idle slice reads near zero.
"""

from __future__ import annotations

import ctypes
from typing import Any

from orchestrator.hardware.nvml_call import (
    FUNCTION_NOT_FOUND,
    GPU_IS_LOST,
    INVALID_ARGUMENT,
    NO_PERMISSION,
    NOT_SUPPORTED,
    Nvml,
    NvmlCallError,
)
from orchestrator.hardware.topology import GpuInstanceInfo, MigProfile

_MIB = 1024 * 1024
_QUIET = (NO_PERMISSION, NOT_SUPPORTED, FUNCTION_NOT_FOUND)


_MAX_INSTANCES = 8  # a GPU holds at most 7 GPU instances, a GPU instance at most 7 compute instances


def _handles(nvml: Nvml, function: str, owner: Any, profile_id: int, handle_type: Any) -> list[Any]:
    """The instance handles ``function`` lists for one profile (GPU instances of a GPU, compute instances of a GI)."""
    array = (handle_type * _MAX_INSTANCES)()
    count = ctypes.c_uint(_MAX_INSTANCES)
    nvml.call(function, owner, profile_id, array, ctypes.byref(count))
    return [array[k] for k in range(count.value)]


def read_gpu_instances(nvml: Nvml, handle: Any, profiles: tuple[MigProfile, ...]) -> tuple[GpuInstanceInfo, ...] | None:
    """Every GPU instance of a MIG-enabled GPU with its placement and compute-instance count, or None if refused."""
    found: list[GpuInstanceInfo] = []
    for profile in profiles:
        try:
            gi_type = nvml.module.c_nvmlGpuInstance_t
            instances = _handles(nvml, "nvmlDeviceGetGpuInstances", handle, profile.profile_id, gi_type)
        except NvmlCallError as error:
            if error.code == GPU_IS_LOST:
                raise
            if error.code == INVALID_ARGUMENT:
                continue  # this profile cannot exist here
            return None  # NoPermission (not root), FunctionNotFound: unknown
        for instance in instances:
            info = nvml.call("nvmlGpuInstanceGetInfo", instance)
            found.append(
                GpuInstanceInfo(
                    gpu_instance_id=int(info.id),
                    profile_id=int(info.profileId),
                    profile=profile.name,
                    start=int(info.placement.start),
                    size=int(info.placement.size),
                    compute_instances=count_compute_instances(nvml, instance),
                )
            )
    return tuple(sorted(found, key=lambda g: g.start))


def count_compute_instances(nvml: Nvml, gpu_instance: Any) -> int:
    """Compute instances inside a GPU instance, over every compute-instance profile."""
    total = 0
    for ci_profile in range(int(nvml.module.NVML_COMPUTE_INSTANCE_PROFILE_COUNT)):
        try:
            ci_type = nvml.module.c_nvmlComputeInstance_t
            total += len(_handles(nvml, "nvmlGpuInstanceGetComputeInstances", gpu_instance, ci_profile, ci_type))
        except NvmlCallError as error:
            if error.code == GPU_IS_LOST:
                raise
            # NotSupported / InvalidArgument: that compute-instance size does not exist in this GPU instance.
    return total


def slice_usage(nvml: Nvml, mig: Any, where: str) -> tuple[tuple[int, ...], int | None]:
    """(pids, MiB in use) of one MIG device; a refused process list warns, an unreadable memory reads None."""
    processes = nvml.optional([], f"{where} process list", "nvmlDeviceGetComputeRunningProcesses", mig, quiet=_QUIET)
    pids = tuple(sorted({int(p.pid) for p in processes}))
    try:
        used = int(nvml.call("nvmlDeviceGetMemoryInfo", mig, version=nvml.module.nvmlMemory_v2).used) // _MIB
    except NvmlCallError as error:
        if error.code == GPU_IS_LOST:
            raise
        # An older driver: v1 counts the reservation too, still far below any tenant's CUDA context.
        memory = nvml.optional(None, f"{where} memory", "nvmlDeviceGetMemoryInfo", mig, quiet=_QUIET)
        used = int(memory.used) // _MIB if memory is not None else None
    return pids, used
