"""GPU discovery through NVML (``nvidia-ml-py``). The only module that imports pynvml.

Contract: ``probe_gpus`` either raises ``NvmlUnavailable`` (no pynvml, no driver library, driver not loaded, init
failure, GPU count unreadable), or returns an ``NvmlReport``. Past the count nothing raises: a GPU that cannot be
read (lost, or an error on its handle, name, UUID, memory or MIG mode) is skipped with a line in
``NvmlReport.warnings``; an optional detail that cannot be read (profile table, placements, a MIG device, processes)
degrades to empty with a warning line. Every
NVML call goes through ``_Nvml.call``, which turns pynvml's exceptions into ``NvmlCallError`` (as nvitop's
``nvmlQuery`` does), so the logic below reasons about NVML error codes, never about pynvml's classes.
"""

from __future__ import annotations

import contextlib
import ctypes
from dataclasses import dataclass
from typing import Any

from orchestrator.hardware.topology import GpuInfo, MigProfile, MigSlice

# nvml.h return codes (a fixed ABI; pynvml exposes the same values as NVML_ERROR_*).
_INVALID_ARGUMENT = 2
_NOT_SUPPORTED = 3
_NOT_FOUND = 6
_DRIVER_NOT_LOADED = 9
_LIBRARY_NOT_FOUND = 12
_FUNCTION_NOT_FOUND = 13
_GPU_IS_LOST = 15
_MIB = 1024 * 1024
_MAX_PROFILE_INDEX = 64  # a bound on the forward-compatible profile enumeration


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used on this machine; the message says why in one line."""


class NvmlCallError(Exception):
    """One NVML call failed. ``code`` is the nvml.h return code; ``str()`` is ``"<call>: <NVML's message>"``."""

    def __init__(self, call: str, code: int, message: str) -> None:
        super().__init__(f"{call}: {message}")
        self.call = call
        self.code = code
        self.message = message


@dataclass(frozen=True)
class NvmlReport:
    """What NVML reported: the readable GPUs, driver versions (None when unreadable) and non-fatal problems."""

    gpus: tuple[GpuInfo, ...]
    driver_version: str | None
    cuda_driver_version: int | None
    warnings: tuple[str, ...]


class _Nvml:
    """The pynvml module behind one helper per failure policy, plus the warnings collected on the way."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.warnings: list[str] = []

    def call(self, function: str, *args: Any) -> Any:
        """Call ``pynvml.<function>``; any failure becomes ``NvmlCallError``."""
        nvml = self.module
        try:
            return getattr(nvml, function)(*args)
        except nvml.NVMLError as error:
            raise NvmlCallError(function, int(error.value), str(error)) from None
        except nvml.NVMLLibraryMismatchError as error:
            # pynvml's unversioned wrappers (nvmlDeviceGetComputeRunningProcesses...) turn FunctionNotFound into
            # this class, which is not an NVMLError: it means the same thing, an older driver.
            raise NvmlCallError(function, _FUNCTION_NOT_FOUND, str(error)) from None

    def optional(self, default: Any, where: str, function: str, *args: Any, quiet: tuple[int, ...] = ()) -> Any:
        """Call, or return ``default``: silently for codes in ``quiet``, else with a warning. A lost GPU re-raises."""
        try:
            return self.call(function, *args)
        except NvmlCallError as error:
            if error.code == _GPU_IS_LOST:
                raise
            if error.code not in quiet:
                self.warnings.append(f"{where}: {error}")
            return default


def _init_failure(error: NvmlCallError) -> str:
    if error.code == _LIBRARY_NOT_FOUND:
        return f"no NVIDIA driver ({error.message})"
    if error.code == _DRIVER_NOT_LOADED:
        return f"the NVIDIA kernel driver is not loaded ({error.message})"
    return f"NVML initialisation failed ({error.message})"


def probe_gpus() -> NvmlReport:
    """List the physical GPUs with their MIG state. Raises ``NvmlUnavailable`` when NVML cannot start.

    ``nvmlInit`` is always balanced by ``nvmlShutdown``, whatever happens in between.
    """
    try:
        import pynvml
    except ImportError:
        raise NvmlUnavailable("the nvidia-ml-py package is not installed") from None
    nvml = _Nvml(pynvml)
    try:
        nvml.call("nvmlInit")
    except NvmlCallError as error:
        raise NvmlUnavailable(_init_failure(error)) from None
    try:
        return _probe(nvml)
    finally:
        with contextlib.suppress(NvmlCallError):
            nvml.call("nvmlShutdown")


def _probe(nvml: _Nvml) -> NvmlReport:
    try:
        count = int(nvml.call("nvmlDeviceGetCount"))
    except NvmlCallError as error:
        raise NvmlUnavailable(f"NVML cannot count the GPUs ({error.message})") from None
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


def _cuda_driver_version(nvml: _Nvml) -> int | None:
    # _v2 reads the version from libcuda itself; drivers without the symbol only have the original call.
    for function in ("nvmlSystemGetCudaDriverVersion_v2", "nvmlSystemGetCudaDriverVersion"):
        with contextlib.suppress(NvmlCallError):
            return int(nvml.call(function))
    return None


def _probe_gpu(nvml: _Nvml, index: int) -> GpuInfo:
    """Read one GPU. Identity queries (handle, name, UUID, memory) and a lost GPU raise ``NvmlCallError``."""
    handle = nvml.call("nvmlDeviceGetHandleByIndex", index)
    name = str(nvml.call("nvmlDeviceGetName", handle))
    uuid = str(nvml.call("nvmlDeviceGetUUID", handle))
    memory_mb = int(nvml.call("nvmlDeviceGetMemoryInfo", handle).total) // _MIB
    where = f"GPU {index} ({uuid})"
    processes = nvml.optional([], f"{where} process list", "nvmlDeviceGetComputeRunningProcesses", handle)
    pids = tuple(sorted({int(process.pid) for process in processes}))
    try:
        current, pending = nvml.call("nvmlDeviceGetMigMode", handle)
    except NvmlCallError as error:
        if error.code != _NOT_SUPPORTED:
            raise
        # This GPU cannot do MIG at all (L4, T4, consumer cards): a whole-GPU device only.
        return GpuInfo(index=index, name=name, uuid=uuid, memory_mb=memory_mb, process_pids=pids)
    profiles, memory_slice_count = _profiles(nvml, handle, where)
    slices = _slices(nvml, handle, index, uuid, profiles) if current == 1 else ()
    return GpuInfo(
        index=index,
        name=name,
        uuid=uuid,
        memory_mb=memory_mb,
        mig_supported=True,
        mig_enabled=current == 1,
        mig_pending_enabled=pending == 1,
        slices=slices,
        profiles=profiles,
        memory_slice_count=memory_slice_count,
        process_pids=pids,
    )


def _profiles(nvml: _Nvml, handle: Any, where: str) -> tuple[tuple[MigProfile, ...], int]:
    """This GPU's GPU-instance profile table (in NVML index order) and its memory-slice count (largest placement end).

    nvml.h answers both queries whether MIG is enabled or not (so a plan can enable MIG), for MIG-capable GPUs.
    Placements may be refused (they need root): the profiles then come without them, with one warning.
    """
    profiles: dict[int, MigProfile] = {}
    memory_slices = 0
    placements_refused = False
    known_indices = int(nvml.module.NVML_GPU_INSTANCE_PROFILE_COUNT)
    for profile_index in range(_MAX_PROFILE_INDEX):
        try:
            info = nvml.call("nvmlDeviceGetGpuInstanceProfileInfo", handle, profile_index)
        except NvmlCallError as error:
            if error.code == _GPU_IS_LOST:
                raise
            if error.code == _INVALID_ARGUMENT and profile_index >= known_indices:
                break  # nvml.h: enumerate from 0 until InvalidArgument (newer drivers may know more than pynvml)
            if error.code in (_NOT_SUPPORTED, _INVALID_ARGUMENT):
                continue  # this GPU has no profile at that index
            nvml.warnings.append(f"{where} MIG profiles unavailable: {error}")
            break  # FunctionNotFound, NoPermission...: every other index would fail the same way
        placements: list[tuple[int, int]] = []
        if not placements_refused:
            try:
                placements = _placements(nvml, handle, int(info.id))
            except NvmlCallError as error:
                if error.code == _GPU_IS_LOST:
                    raise
                if error.code != _NOT_SUPPORTED:
                    placements_refused = True
                    nvml.warnings.append(f"{where} MIG placements unavailable: {error}")
        memory_slices = max([memory_slices, *(start + size for start, size in placements)])
        name = info.name.decode() if isinstance(info.name, bytes) else str(info.name)  # pynvml decodes; older: bytes
        profiles[int(info.id)] = MigProfile(
            name=name.removeprefix("MIG "),
            profile_id=int(info.id),
            compute_slices=int(info.sliceCount),
            memory_mb=int(info.memorySizeMB),
            sm_count=int(info.multiprocessorCount),
            max_instances=int(info.instanceCount),
            placements=tuple(start for start, _ in placements),
            placement_size=placements[0][1] if placements else 0,
        )
    return tuple(profiles.values()), memory_slices


def _placements(nvml: _Nvml, handle: Any, profile_id: int) -> list[tuple[int, int]]:
    """(start, size) memory-slice placements of a profile, sorted. Raises ``NvmlCallError``."""
    count = ctypes.c_uint(0)
    # First with a NULL array: NVML only reports how many placements there are.
    nvml.call("nvmlDeviceGetGpuInstancePossiblePlacements", handle, profile_id, None, ctypes.byref(count))
    if count.value == 0:
        return []
    array = (nvml.module.c_nvmlGpuInstancePlacement_t * count.value)()
    nvml.call("nvmlDeviceGetGpuInstancePossiblePlacements", handle, profile_id, array, ctypes.byref(count))
    return sorted((int(array[k].start), int(array[k].size)) for k in range(count.value))


def _slices(
    nvml: _Nvml, handle: Any, index: int, parent_uuid: str, profiles: tuple[MigProfile, ...]
) -> tuple[MigSlice, ...]:
    """The existing MIG devices. Slots are not dense: empty ones answer NotFound (or InvalidArgument)."""
    where = f"GPU {index} ({parent_uuid})"
    max_count = int(nvml.optional(0, f"{where} MIG device count", "nvmlDeviceGetMaxMigDeviceCount", handle))
    slices = []
    for slot in range(max_count):
        try:
            mig = nvml.call("nvmlDeviceGetMigDeviceHandleByIndex", handle, slot)
        except NvmlCallError as error:
            if error.code in (_NOT_FOUND, _INVALID_ARGUMENT):
                continue  # an empty slot
            if error.code == _GPU_IS_LOST:
                raise
            nvml.warnings.append(f"{where} MIG device {slot} skipped: {error}")
            continue
        try:
            slices.append(_slice(nvml, mig, index, parent_uuid, profiles))
        except NvmlCallError as error:
            if error.code == _GPU_IS_LOST:
                raise
            nvml.warnings.append(f"{where} MIG device {slot} skipped: {error}")
    return tuple(slices)


def _slice(nvml: _Nvml, mig: Any, index: int, parent_uuid: str, profiles: tuple[MigProfile, ...]) -> MigSlice:
    name = str(nvml.call("nvmlDeviceGetName", mig))
    # "NVIDIA A100-SXM4-40GB MIG 1g.5gb" -> "1g.5gb" (or "1c.3g.20gb" for a compute instance smaller than its GI).
    profile = name.rpartition("MIG ")[2] if "MIG " in name else name
    known = next((p for p in profiles if p.name == profile), None)
    # Quiet: without GetAttributes (older drivers) the profile table gives the SMs of a full compute instance.
    quiet = (_NOT_SUPPORTED, _FUNCTION_NOT_FOUND)
    attributes = nvml.optional(None, f"{name} attributes", "nvmlDeviceGetAttributes", mig, quiet=quiet)
    if attributes is not None:
        sm_count = int(attributes.multiprocessorCount)
    else:
        sm_count = known.sm_count if known is not None else 0
    return MigSlice(
        uuid=str(nvml.call("nvmlDeviceGetUUID", mig)),
        profile=profile,
        gpu_instance_id=int(nvml.call("nvmlDeviceGetGpuInstanceId", mig)),
        compute_instance_id=int(nvml.call("nvmlDeviceGetComputeInstanceId", mig)),
        memory_mb=int(nvml.call("nvmlDeviceGetMemoryInfo", mig).total) // _MIB,
        sm_count=sm_count,
        parent_index=index,
        parent_uuid=parent_uuid,
    )
