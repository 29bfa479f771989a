"""GPU discovery through NVML (``nvidia-ml-py``). The only module that imports pynvml to probe.

Contract: ``probe_gpus`` either raises ``NvmlUnavailable`` (no pynvml, no driver library, driver not loaded, init
failure, GPU count unreadable), or returns an ``NvmlReport``. ``NvmlUnavailable.code`` is nvml.h's return code
(None when the package is missing), so a caller can tell "no driver installed" (LibraryNotFound) from a broken one
(gpu-audit W4). Past the count nothing raises: a GPU that cannot be read (lost, or an error on its handle, name,
UUID, memory or MIG mode) is skipped with a line in ``NvmlReport.warnings``; an optional detail that cannot be read
(profile table, placements, GPU instances, a MIG device, processes) degrades to empty or unknown, with a warning
where a user can act on it. Every NVML call goes through ``nvml_call.Nvml``.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

from orchestrator.hardware.mig_profile_table import BoardTable, board_for
from orchestrator.hardware.nvml_call import (
    DRIVER_NOT_LOADED,
    FUNCTION_NOT_FOUND,
    GPU_IS_LOST,
    INVALID_ARGUMENT,
    LIB_RM_VERSION_MISMATCH,
    LIBRARY_NOT_FOUND,
    NO_PERMISSION,
    NOT_FOUND,
    NOT_SUPPORTED,
    Nvml,
    NvmlCallError,
)
from orchestrator.hardware.nvml_instances import read_gpu_instances, slice_usage
from orchestrator.hardware.nvml_profiles import read_profiles
from orchestrator.hardware.topology import GpuInfo, MigProfile, MigSlice

_MIB = 1024 * 1024


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used on this machine; the message says why in one line, ``code`` is nvml.h's return code."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def driver_absent(self) -> bool:
        """True when no NVIDIA driver is installed at all (or nvidia-ml-py is missing): a CPU machine."""
        return self.code in (None, LIBRARY_NOT_FOUND)


@dataclass(frozen=True)
class NvmlReport:
    """What NVML reported: the readable GPUs, driver versions (None when unreadable) and non-fatal problems."""

    gpus: tuple[GpuInfo, ...]
    driver_version: str | None
    cuda_driver_version: int | None
    warnings: tuple[str, ...]


def _init_failure(error: NvmlCallError) -> str:
    if error.code == LIBRARY_NOT_FOUND:
        return f"no NVIDIA driver ({error.message})"
    if error.code == DRIVER_NOT_LOADED:
        return (
            f"the NVIDIA kernel driver is not loaded ({error.message}): load it (sudo modprobe nvidia) or reinstall "
            "the driver, and check dmesg for why it failed"
        )
    if error.code == LIB_RM_VERSION_MISMATCH:
        return (
            f"the NVML library and the loaded kernel driver are different versions ({error.message}), usually after "
            "a driver upgrade without a reboot: reboot, or reload the nvidia kernel modules"
        )
    return f"NVML initialisation failed ({error.message}): run nvidia-smi to see what the driver says"


def probe_gpus() -> NvmlReport:
    """List the physical GPUs with their MIG state. Raises ``NvmlUnavailable`` when NVML cannot start.

    ``nvmlInit`` is always balanced by ``nvmlShutdown``, whatever happens in between.
    """
    try:
        import pynvml
    except ImportError:
        raise NvmlUnavailable("the nvidia-ml-py package is not installed") from None
    nvml = Nvml(pynvml)
    try:
        nvml.call("nvmlInit")
    except NvmlCallError as error:
        raise NvmlUnavailable(_init_failure(error), error.code) from None
    try:
        return _probe(nvml)
    finally:
        with contextlib.suppress(NvmlCallError):
            nvml.call("nvmlShutdown")


def _probe(nvml: Nvml) -> NvmlReport:
    try:
        count = int(nvml.call("nvmlDeviceGetCount"))
    except NvmlCallError as error:
        raise NvmlUnavailable(f"NVML cannot count the GPUs ({error.message})", error.code) from None
    driver = nvml.optional(None, "driver version", "nvmlSystemGetDriverVersion")
    gpus = []
    for index in range(count):
        try:
            gpus.append(_probe_gpu(nvml, index))
        except NvmlCallError as error:
            nvml.warnings.append(f"GPU {index} skipped: {error}")
    return NvmlReport(
        gpus=tuple(gpus),
        driver_version=str(driver) if driver is not None else None,
        cuda_driver_version=_cuda_driver_version(nvml),
        warnings=tuple(nvml.warnings),
    )


def _cuda_driver_version(nvml: Nvml) -> int | None:
    # _v2 reads the version from libcuda itself; drivers without the symbol only have the original call.
    for function in ("nvmlSystemGetCudaDriverVersion_v2", "nvmlSystemGetCudaDriverVersion"):
        with contextlib.suppress(NvmlCallError):
            return int(nvml.call(function))
    return None


def _identity(nvml: Nvml, handle: Any) -> tuple[int | None, tuple[int, int] | None]:
    """(PCI device id, compute capability), each None when unreadable: they only refine the plan."""
    quiet = (NOT_SUPPORTED, FUNCTION_NOT_FOUND, NO_PERMISSION, INVALID_ARGUMENT)
    pci = nvml.optional(None, "PCI info", "nvmlDeviceGetPciInfo", handle, quiet=quiet)
    capability = nvml.optional(None, "compute capability", "nvmlDeviceGetCudaComputeCapability", handle, quiet=quiet)
    pci_id = int(pci.pciDeviceId) if pci is not None and int(pci.pciDeviceId) else None
    cc = (int(capability[0]), int(capability[1])) if capability is not None and capability[0] else None
    return pci_id, cc


def _probe_gpu(nvml: Nvml, index: int) -> GpuInfo:
    """Read one GPU. Identity queries (handle, name, UUID, memory) and a lost GPU raise ``NvmlCallError``."""
    handle = nvml.call("nvmlDeviceGetHandleByIndex", index)
    name = str(nvml.call("nvmlDeviceGetName", handle))
    uuid = str(nvml.call("nvmlDeviceGetUUID", handle))
    memory_mb = int(nvml.call("nvmlDeviceGetMemoryInfo", handle).total) // _MIB
    where = f"GPU {index} ({uuid})"
    pci_id, capability = _identity(nvml, handle)
    try:
        current, pending = nvml.call("nvmlDeviceGetMigMode", handle)
    except NvmlCallError as error:
        if error.code != NOT_SUPPORTED:
            raise
        # This GPU cannot do MIG at all (L4, T4, consumer cards): a whole-GPU device only.
        processes = nvml.optional([], f"{where} process list", "nvmlDeviceGetComputeRunningProcesses", handle)
        pids = tuple(sorted({int(process.pid) for process in processes}))
        return GpuInfo(
            index, name, uuid, memory_mb, process_pids=pids, pci_device_id=pci_id, compute_capability=capability
        )
    # A MIG parent's aggregate process list needs root (nvml.h; C2): refused, the MIG devices' own lists answer.
    quiet = (NO_PERMISSION,) if current == 1 else ()
    processes = nvml.optional([], f"{where} process list", "nvmlDeviceGetComputeRunningProcesses", handle, quiet=quiet)
    board = board_for(pci_id)
    table = read_profiles(nvml, handle, where, board, settled=current == 1 and pending == 1)
    slices = _slices(nvml, handle, index, uuid, table.profiles) if current == 1 else ()
    instances = read_gpu_instances(nvml, handle, table.profiles) if current == 1 else None
    pids = {int(process.pid) for process in processes} | {pid for s in slices for pid in s.process_pids}
    return GpuInfo(
        index=index,
        name=name,
        uuid=uuid,
        memory_mb=memory_mb,
        mig_supported=True,
        mig_enabled=current == 1,
        mig_pending_enabled=pending == 1,
        slices=slices,
        profiles=table.profiles,
        memory_slice_count=table.memory_slice_count,
        process_pids=tuple(sorted(pids)),
        pci_device_id=pci_id,
        compute_capability=capability,
        profiles_assumed=table.assumed,
        gpu_instances=instances,
    )


def _slices(
    nvml: Nvml, handle: Any, index: int, parent_uuid: str, profiles: tuple[MigProfile, ...]
) -> tuple[MigSlice, ...]:
    """The existing MIG devices. Slots are not dense: empty ones answer NotFound (or InvalidArgument)."""
    where = f"GPU {index} ({parent_uuid})"
    max_count = int(nvml.optional(0, f"{where} MIG device count", "nvmlDeviceGetMaxMigDeviceCount", handle))
    slices = []
    for slot in range(max_count):
        try:
            mig = nvml.call("nvmlDeviceGetMigDeviceHandleByIndex", handle, slot)
        except NvmlCallError as error:
            if error.code in (NOT_FOUND, INVALID_ARGUMENT):
                continue  # an empty slot
            if error.code == GPU_IS_LOST:
                raise
            nvml.warnings.append(f"{where} MIG device {slot} skipped: {error}")
            continue
        try:
            slices.append(_slice(nvml, mig, index, parent_uuid, profiles))
        except NvmlCallError as error:
            if error.code == GPU_IS_LOST:
                raise
            nvml.warnings.append(f"{where} MIG device {slot} skipped: {error}")
    return _share_gpu_instance_memory(tuple(slices))


def _share_gpu_instance_memory(slices: tuple[MigSlice, ...]) -> tuple[MigSlice, ...]:
    """Compute instances of one GPU instance share its memory, and each reports all of it (W10): split it."""
    sharing = Counter(s.gpu_instance_id for s in slices)
    return tuple(
        s
        if sharing[s.gpu_instance_id] == 1
        else MigSlice(
            **{
                **s.__dict__,
                "memory_mb": s.memory_mb // sharing[s.gpu_instance_id],
                "shared_by": sharing[s.gpu_instance_id],
            }
        )
        for s in slices
    )


def _slice(nvml: Nvml, mig: Any, index: int, parent_uuid: str, profiles: tuple[MigProfile, ...]) -> MigSlice:
    name = str(nvml.call("nvmlDeviceGetName", mig))
    # "NVIDIA A100-SXM4-40GB MIG 1g.5gb" -> "1g.5gb" (or "1c.3g.20gb" for a compute instance smaller than its GI).
    profile = name.rpartition("MIG ")[2] if "MIG " in name else name
    known = next((p for p in profiles if p.name == profile), None)
    # Quiet: without GetAttributes (older drivers) the profile table gives the SMs of a full compute instance.
    quiet = (NOT_SUPPORTED, FUNCTION_NOT_FOUND)
    attributes = nvml.optional(None, f"{name} attributes", "nvmlDeviceGetAttributes", mig, quiet=quiet)
    if attributes is not None:
        sm_count = int(attributes.multiprocessorCount)
    else:
        sm_count = known.sm_count if known is not None else 0
    uuid = str(nvml.call("nvmlDeviceGetUUID", mig))
    pids, used_mb = slice_usage(nvml, mig, f"MIG device {uuid}")
    return MigSlice(
        uuid=uuid,
        profile=profile,
        gpu_instance_id=int(nvml.call("nvmlDeviceGetGpuInstanceId", mig)),
        compute_instance_id=int(nvml.call("nvmlDeviceGetComputeInstanceId", mig)),
        memory_mb=int(nvml.call("nvmlDeviceGetMemoryInfo", mig).total) // _MIB,
        sm_count=sm_count,
        parent_index=index,
        parent_uuid=parent_uuid,
        process_pids=pids,
        used_memory_mb=used_mb,
    )


def board_of(gpu: GpuInfo) -> BoardTable | None:
    """The built-in profile table of a probed GPU, if its PCI device id is known."""
    return board_for(gpu.pci_device_id)
