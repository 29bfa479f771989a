"""A fake ``libnvidia-ml.so.1`` for the real pynvml wrappers to run over, fed from JSON fixtures.

``install_fake_nvml`` (see shared/reference/mig-nvml.md section 6) resets ``pynvml.nvmlLib``, clears
``_nvmlGetFunctionPointer_cache`` and gives pynvml a ``CDLL`` that returns a ``FakeNvmlLib`` (or raises ``OSError``:
no driver), all via ``monkeypatch``; pynvml's loading, structs, ``_nvmlCheckReturn`` and exceptions run as on a GPU.
As NVML does, the fake writes outputs through ``byref`` arguments (``arg._obj``) and string buffers and returns
errors as ``NVML_ERROR_*`` ints; a symbol not implemented (or in a fixture's ``missing_symbols``, or newer than the
fixture's driver branch) raises ``AttributeError`` like ``CDLL``, which pynvml reports as ``FunctionNotFound``;
outside an init/shutdown pair, calls return ``Uninitialized``.

It is as strict as real drivers where the project depends on it (gpu-audit B2, B4, W2, W4, W5, W10, W11, C2, C3):
- the GPU-instance profile queries answer NotSupported unless MIG is on with no mode change pending (R535; a fixture
  with ``"profiles_when_mig_off": true`` is a driver that answers anyway); ``...ProfileInfoV`` does not exist before
  R510 (FunctionNotFound on a ``"driver_version": "470..."`` fixture); the unversioned v1 call does;
- ``"root": false`` (the caller is not root): placements, GPU-instance listing, mode changes, create/destroy and the
  aggregate process list of a MIG-enabled parent answer NoPermission (per-MIG-handle queries still work);
- MIG devices are compute instances inside GPU instances: a GPU instance may have none (invisible to the MIG-device
  enumeration, yet it holds its memory slices) or several (``1c.3g.20gb``, each reporting the GPU instance's memory);
- ``nvmlDeviceCreateGpuInstance`` places an instance where the driver does, the upper half of the memory slices first
  (``-cgi 19`` x7 on an A100 lands at 4, 5, 6, 0, 1, 2, 3; the same rule is assumed for other profiles);
  ``...WithPlacement`` creates exactly where asked or answers InsufficientResources;
- a mode change applies at once on Hopper unless the GPU is held (processes, or ``"mode_change_blocked"`` for
  DCGM/nvsm), and on GA100 (compute capability 8.0) only at ``FakeNvmlLib.reset_gpu`` (``nvidia-smi -r``);
- A30 tables may report ``reported_max`` instead of the real instanceCount (profiles.json);
- memory v1 ``used`` includes ``reserved_mb``; v2 (``nvmlDeviceGetMemoryInfo_v2``) reports it apart;
- per-MIG-handle process lists hold the processes whose GPU/compute instance ids match that MIG device.

Fixture (``tests/fixtures/nvml/<stem>.json``): ``driver_version``, ``cuda_driver_version``, ``root``,
``profiles_when_mig_off``, ``gpus`` (``model`` = a key of ``profiles.json`` or null, ``name``, ``uuid``,
``memory_mb``, ``mig_mode`` = [current, pending] or null if the GPU cannot do MIG, ``mig_devices`` (GPU instances:
``profile``, ``start``, ``gpu_instance_id``, optional ``used_memory_mb``/``reserved_mb``, and either
``compute_instance_id`` + ``uuid`` (+ ``slot``) for one full compute instance or ``compute_instances`` = a list of
{``compute_instance_id``, ``slices``, ``uuid``, optional ``slot``}, possibly empty), ``processes`` (with
``gpu_instance_id``/``compute_instance_id`` when they run on a MIG device), optional ``pci_device_id`` and
``compute_capability`` for a GPU without a model, ``lost``, ``mode_change_blocked`` and ``errors`` = {symbol:
error}); machine-level ``init_error``, ``library: "missing"``, ``missing_symbols``, ``errors``. Errors are pynvml's
class names without ``NVMLError_`` (``GpuIsLost``, ``LibRmVersionMismatch``, ``Unknown``). Layouts are validated on
load (``FixtureError``): no impossible GPU.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pynvml
import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "nvml"
MIB = 1024 * 1024
NO_INSTANCE_ID = 0xFFFFFFFF  # the GI/CI id NVML reports for a process on a GPU without MIG
ERROR_CODES: dict[str, int] = {
    cls.__name__.removeprefix("NVMLError_"): code for code, cls in pynvml.NVMLError._valClassMapping.items()
}
_LIFECYCLE = ("nvmlInitWithFlags", "nvmlShutdown", "nvmlErrorString")  # handled by FakeNvmlLib itself
# Symbols a driver branch does not have yet: go-nvml's nvml.h history (the V profile query arrived with R510).
_SYMBOL_SINCE_BRANCH = {"nvmlDeviceGetGpuInstanceProfileInfoV": 510}
# Calls that need root (nvml.h "Requires privileged user"; as non-root nvidia-smi mig -lgi/-lgip placements fail).
_PRIVILEGED = frozenset(
    {
        "nvmlDeviceGetGpuInstancePossiblePlacements_v2",
        "nvmlDeviceGetGpuInstances",
        "nvmlDeviceGetGpuInstanceById",
        "nvmlDeviceSetMigMode",
        "nvmlDeviceCreateGpuInstance",
        "nvmlDeviceCreateGpuInstanceWithPlacement",
        "nvmlGpuInstanceDestroy",
        "nvmlGpuInstanceCreateComputeInstance",
        "nvmlGpuInstanceGetComputeInstances",
        "nvmlComputeInstanceDestroy",
    }
)
# NVML_COMPUTE_INSTANCE_PROFILE_<n>_SLICE index -> compute slices.
_CI_PROFILE_SLICES = {0: 1, 1: 2, 2: 3, 3: 4, 4: 7, 5: 8, 6: 6}


class FixtureError(ValueError):
    """A fixture describes something no real GPU reports (unknown profile, overlapping placements...)."""


class _Return(Exception):
    """``raise _Return(code)`` inside a fake symbol makes the C function return that NVML error code."""


@dataclass(frozen=True)
class Profile:
    """One row of a GPU model's table in ``profiles.json``."""

    index: int
    id: int
    name: str
    slices: int
    memory_mb: int
    sms: int
    max: int
    placements: tuple[int, ...]
    size: int
    reported_max: int | None = None


@dataclass
class FakeGpu:
    """A physical GPU of the fixture; ``mig_devices`` maps MIG-device slot to compute instance."""

    index: int
    name: str
    uuid: str
    memory_mb: int
    mig_mode: tuple[int, int] | None
    profiles: tuple[Profile, ...]
    max_mig_devices: int
    processes: list[dict[str, int]]
    lost: bool
    errors: dict[str, int]
    pci_device_id: int = 0
    compute_capability: tuple[int, int] = (0, 0)
    mode_change_blocked: bool = False
    reserved_mb: int = 0
    gpu_instances: dict[int, FakeGpuInstance] = field(default_factory=dict)
    mig_devices: dict[int, FakeMigDevice] = field(default_factory=dict)

    @property
    def mig_on(self) -> bool:
        return self.mig_mode is not None and self.mig_mode[0] == 1

    @property
    def mig_settled(self) -> bool:
        """MIG on and no mode change pending: what the profile queries need (R535)."""
        return self.mig_mode == (1, 1)

    @property
    def needs_reset(self) -> bool:
        """GA100 (A100, A30, A800) applies a MIG mode change only at a GPU reset."""
        return self.compute_capability == (8, 0)

    def compute_slices(self) -> int:
        return max((p.slices for p in self.profiles), default=0)  # 7 on A100/H100/H200, 4 on A30

    def used_spans(self) -> set[int]:
        return {s for gi in self.gpu_instances.values() for s in range(gi.start, gi.start + gi.profile.size)}


@dataclass
class FakeGpuInstance:
    """A GPU instance: a profile at a memory-slice start, holding zero or more compute instances."""

    id: int
    profile: Profile
    start: int
    gpu: FakeGpu
    used_memory_mb: int = 0
    reserved_mb: int = 0
    compute_instances: dict[int, FakeMigDevice] = field(default_factory=dict)


@dataclass
class FakeMigDevice:
    """A compute instance, which is what NVML enumerates as a MIG device."""

    uuid: str
    compute_instance_id: int
    slices: int
    gpu_instance: FakeGpuInstance
    slot: int

    @property
    def parent(self) -> FakeGpu:
        return self.gpu_instance.gpu

    @property
    def profile(self) -> Profile:
        return self.gpu_instance.profile

    @property
    def gpu_instance_id(self) -> int:
        return self.gpu_instance.id

    @property
    def name(self) -> str:
        """``1g.5gb`` for a full compute instance, ``1c.3g.20gb`` for a smaller one."""
        full = self.slices == self.profile.slices
        return self.profile.name if full else f"{self.slices}c.{self.profile.name}"

    @property
    def sms(self) -> int:
        if self.slices == self.profile.slices:
            return self.profile.sms
        one = next((p.sms for p in self.parent.profiles if p.slices == 1), self.profile.sms // self.profile.slices)
        return one * self.slices

    def processes(self) -> list[dict[str, int]]:
        return [
            p
            for p in self.parent.processes
            if p.get("gpu_instance_id") == self.gpu_instance_id
            and p.get("compute_instance_id") == self.compute_instance_id
        ]


@dataclass
class FakeMachine:
    """A validated fixture."""

    gpus: list[FakeGpu]
    driver_version: str
    cuda_driver_version: int
    init_error: int | None
    library_missing: bool
    missing_symbols: frozenset[str]
    errors: dict[str, int]
    root: bool = True
    profiles_when_mig_off: bool = False


def _code(name: str) -> int:
    if name not in ERROR_CODES:
        raise FixtureError(f"unknown NVML error {name!r}; use one of {sorted(ERROR_CODES)}")
    return ERROR_CODES[name]


def _hex(value: str | int) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


def _load_gpu(index: int, raw: dict[str, Any], tables: dict[str, Any]) -> FakeGpu:
    model, mig_mode = raw.get("model"), raw.get("mig_mode")
    if (model is not None and model not in tables) or (mig_mode is not None and model is None):
        raise FixtureError(f"GPU {index}: unknown model {model!r}, or a MIG mode without a profile table")
    table = tables[model] if model is not None else {"profiles": [], "max_mig_devices": 0}
    mode = (int(mig_mode[0]), int(mig_mode[1])) if mig_mode is not None else None
    profiles = tuple(Profile(**{**p, "placements": tuple(p["placements"])}) for p in table["profiles"])
    errors = {symbol: _code(name) for symbol, name in raw.get("errors", {}).items()}
    fields = (raw["name"], raw["uuid"], raw["memory_mb"], mode, profiles, table["max_mig_devices"])
    gpu = FakeGpu(index, *fields, raw.get("processes", []), raw.get("lost", False), errors)
    gpu.pci_device_id = _hex(raw.get("pci_device_id", table.get("pci_device_id", 0)))
    gpu.compute_capability = tuple(raw.get("compute_capability", table.get("compute_capability", (0, 0))))  # type: ignore[assignment]
    gpu.mode_change_blocked = bool(raw.get("mode_change_blocked", False))
    gpu.reserved_mb = int(raw.get("reserved_mb", 0))
    devices = raw.get("mig_devices", [])
    if devices and not gpu.mig_on:
        raise FixtureError(f"GPU {index}: MIG devices exist only while MIG mode is currently enabled")
    compute_left = gpu.compute_slices()
    for dev in devices:
        profile = next((p for p in gpu.profiles if p.name == dev["profile"]), None)
        if profile is None or dev["start"] not in profile.placements:
            raise FixtureError(f"GPU {index}: no {dev['profile']} at memory slice {dev['start']} on a {model}")
        span = set(range(dev["start"], dev["start"] + profile.size))
        compute_left -= profile.slices
        too_many = compute_left < 0 or sum(d["profile"] == profile.name for d in devices) > profile.max
        reused = dev["gpu_instance_id"] in gpu.gpu_instances
        if span & gpu.used_spans() or too_many or reused:
            raise FixtureError(f"GPU {index}: {profile.name} at {dev['start']} overlaps, exceeds or reuses an id")
        gi = FakeGpuInstance(
            dev["gpu_instance_id"], profile, dev["start"], gpu, dev.get("used_memory_mb", 0), dev.get("reserved_mb", 0)
        )
        gpu.gpu_instances[gi.id] = gi
        if "compute_instances" in dev:
            cis = dev["compute_instances"]
        else:
            one = {"compute_instance_id": dev["compute_instance_id"], "slices": profile.slices, "uuid": dev["uuid"]}
            cis = [{**one, **({"slot": dev["slot"]} if "slot" in dev else {})}]
        if sum(ci["slices"] for ci in cis) > profile.slices or any(ci["slices"] > profile.slices for ci in cis):
            raise FixtureError(f"GPU {index}: compute instances of GPU instance {gi.id} exceed its compute slices")
        for ci in cis:
            slot = ci.get("slot", _free_slot(gpu))
            if slot in gpu.mig_devices or ci["compute_instance_id"] in gi.compute_instances:
                raise FixtureError(f"GPU {index}: MIG device slot {slot} or compute instance id reused")
            if not 0 <= slot < gpu.max_mig_devices:
                raise FixtureError(f"GPU {index}: MIG device slot {slot} out of range")
            device = FakeMigDevice(ci["uuid"], ci["compute_instance_id"], ci["slices"], gi, slot)
            gi.compute_instances[device.compute_instance_id] = device
            gpu.mig_devices[slot] = device
    return gpu


def _free_slot(gpu: FakeGpu) -> int:
    return next(slot for slot in range(gpu.max_mig_devices + 1) if slot not in gpu.mig_devices)


def load_machine(fixture: str | dict[str, Any]) -> FakeMachine:
    """Read and validate a fixture: a file stem under ``tests/fixtures/nvml`` or a dict in the same format."""
    raw = json.loads((FIXTURES / f"{fixture}.json").read_text()) if isinstance(fixture, str) else fixture
    tables = json.loads((FIXTURES / "profiles.json").read_text())
    gpus = [_load_gpu(i, g, tables) for i, g in enumerate(raw.get("gpus", []))]
    uuids = [g.uuid for g in gpus] + [d.uuid for g in gpus for d in g.mig_devices.values()]
    if len(set(uuids)) != len(uuids):
        raise FixtureError("duplicate UUIDs")
    versions = raw.get("driver_version", "550.54.15"), raw.get("cuda_driver_version", 12040)
    init_error = _code(raw["init_error"]) if raw.get("init_error") else None
    errors = {symbol: _code(name) for symbol, name in raw.get("errors", {}).items()}
    branch = int(str(versions[0]).split(".")[0])
    too_new = {symbol for symbol, since in _SYMBOL_SINCE_BRANCH.items() if branch < since}
    missing = frozenset(raw.get("missing_symbols", [])) | too_new
    return FakeMachine(
        gpus,
        *versions,
        init_error,
        raw.get("library") == "missing",
        missing,
        errors,
        root=bool(raw.get("root", True)),
        profiles_when_mig_off=bool(raw.get("profiles_when_mig_off", False)),
    )


def machine_of(*gpus: tuple[str, int]) -> dict[str, Any]:
    """A fixture dict whose GPUs are taken from existing fixtures, as (file stem, GPU position) pairs, in order:
    ``machine_of(("a100_mig_disabled", 0), ("two_gpus_mig_and_whole", 1))`` is an A100 with MIG off and an L4."""
    return {"gpus": [json.loads((FIXTURES / f"{stem}.json").read_text())["gpus"][index] for stem, index in gpus]}


def _int(value: Any) -> int:
    """An ``unsigned int`` argument arrives as a python int or a ``c_uint``, depending on the wrapper."""
    return int(value.value) if isinstance(value, ctypes._SimpleCData) else int(value)


def _set(ref: Any, value: int) -> None:
    """Write through an ``unsigned int*`` passed as ``byref(c_uint())``."""
    ref._obj.value = value


def _write_str(buffer: Any, length: Any, text: str) -> None:
    data = text.encode()
    if len(data) + 1 > _int(length):
        raise _Return(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)
    buffer.value = data


def _pointer_value(ref: Any) -> int:
    """The address a handle argument carries (a ctypes pointer, a c_void_p or a byref to one)."""
    target = getattr(ref, "_obj", ref)
    return ctypes.cast(target, ctypes.c_void_p).value or 0


def _driver_order(profile: Profile, memory_slices: int) -> list[int]:
    """Where ``nvmlDeviceCreateGpuInstance`` tries to put an instance: upper half first (audit B4)."""
    upper = [s for s in profile.placements if s >= memory_slices // 2]
    return upper + [s for s in profile.placements if s < memory_slices // 2]


class _Symbols:
    """The C functions, named as in nvml.h. Each returns None for success or raises ``_Return(error code)``."""

    def __init__(self, machine: FakeMachine) -> None:
        self.machine = machine
        self.current_symbol = ""
        # NVML handles are opaque pointers; here, distinct fake addresses that are never dereferenced.
        self.node_at: dict[int, Any] = {}
        self.address: dict[int, int] = {}
        self._next_address = 0x1000000
        for gpu in machine.gpus:
            self._register(gpu, 0x10000 * (gpu.index + 1))
            for gi in gpu.gpu_instances.values():
                self._register(gi)
                for device in gi.compute_instances.values():
                    self._register(device)

    def _register(self, node: Any, address: int | None = None) -> int:
        if address is None:
            self._next_address += 0x100
            address = self._next_address
        self.node_at[address] = node
        self.address[id(node)] = address
        return address

    def _forget(self, node: Any) -> None:
        self.node_at.pop(self.address.pop(id(node), 0), None)  # a destroyed instance's handle becomes invalid

    def _write_handle(self, ref: Any, node: Any) -> None:
        ctypes.c_void_p.from_buffer(ref._obj).value = self.address[id(node)]

    def _write_handles(self, array: Any, nodes: list[Any]) -> None:
        """Fill a C array of opaque handles (``nvmlGpuInstance_t *``...), element by element."""
        base = ctypes.addressof(getattr(array, "_obj", array))
        for k, node in enumerate(nodes):
            ctypes.c_void_p.from_address(base + k * ctypes.sizeof(ctypes.c_void_p)).value = self.address[id(node)]

    def _check(self, gpu: FakeGpu) -> None:
        if gpu.lost:
            raise _Return(pynvml.NVML_ERROR_GPU_IS_LOST)
        if self.current_symbol in gpu.errors:
            raise _Return(gpu.errors[self.current_symbol])
        if self.current_symbol in _PRIVILEGED and not self.machine.root:
            raise _Return(pynvml.NVML_ERROR_NO_PERMISSION)

    def _node(self, handle: Any) -> FakeGpu | FakeMigDevice:
        node = self.node_at.get(_pointer_value(handle))
        if not isinstance(node, FakeGpu | FakeMigDevice):
            raise _Return(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self._check(node if isinstance(node, FakeGpu) else node.parent)
        return node

    def _gpu(self, handle: Any, mig_capable: bool = False) -> FakeGpu:
        node = self._node(handle)
        if not isinstance(node, FakeGpu):
            raise _Return(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if mig_capable and node.mig_mode is None:
            raise _Return(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return node

    def _mig(self, handle: Any) -> FakeMigDevice:
        node = self._node(handle)
        if isinstance(node, FakeMigDevice):
            return node
        raise _Return(pynvml.NVML_ERROR_INVALID_ARGUMENT)  # e.g. a GI/CI id asked of a whole GPU

    def _gi(self, handle: Any) -> FakeGpuInstance:
        node = self.node_at.get(_pointer_value(handle))
        if not isinstance(node, FakeGpuInstance):
            raise _Return(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self._check(node.gpu)
        return node

    def _managed(self, handle: Any) -> FakeGpu:
        """A GPU whose MIG instances are being listed or changed: nvml.h NotSupported unless MIG is on."""
        gpu = self._gpu(handle, mig_capable=True)
        if not gpu.mig_on:
            raise _Return(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu

    # --- system and identity -----------------------------------------------------------------------------------

    def nvmlSystemGetDriverVersion(self, buffer: Any, length: Any) -> None:
        _write_str(buffer, length, self.machine.driver_version)

    def nvmlSystemGetCudaDriverVersion(self, ref: Any) -> None:
        _set(ref, self.machine.cuda_driver_version)

    nvmlSystemGetCudaDriverVersion_v2 = nvmlSystemGetCudaDriverVersion

    def nvmlDeviceGetCount_v2(self, ref: Any) -> None:
        _set(ref, len(self.machine.gpus))  # a lost GPU is still counted; its handle query fails

    def nvmlDeviceGetHandleByIndex_v2(self, index: Any, ref: Any) -> None:
        if not 0 <= _int(index) < len(self.machine.gpus):
            raise _Return(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.machine.gpus[_int(index)]
        if gpu.lost:
            raise _Return(pynvml.NVML_ERROR_GPU_IS_LOST)
        self._write_handle(ref, gpu)

    def nvmlDeviceGetHandleByUUID(self, uuid: Any, ref: Any) -> None:
        wanted = uuid.value.decode() if hasattr(uuid, "value") else str(uuid)
        nodes = [n for g in self.machine.gpus if not g.lost for n in (g, *g.mig_devices.values())]
        match = next((node for node in nodes if node.uuid == wanted), None)
        if match is None:
            raise _Return(pynvml.NVML_ERROR_NOT_FOUND)
        self._write_handle(ref, match)

    def nvmlDeviceGetName(self, handle: Any, buffer: Any, length: Any) -> None:
        node = self._node(handle)
        name = node.name if isinstance(node, FakeGpu) else f"{node.parent.name} MIG {node.name}"
        _write_str(buffer, length, name)

    def nvmlDeviceGetUUID(self, handle: Any, buffer: Any, length: Any) -> None:
        _write_str(buffer, length, self._node(handle).uuid)

    def nvmlDeviceGetPciInfo_v3(self, handle: Any, ref: Any) -> None:
        gpu = self._gpu(handle)
        ref._obj.pciDeviceId = gpu.pci_device_id
        ref._obj.bus = gpu.index + 1

    def nvmlDeviceGetCudaComputeCapability(self, handle: Any, major: Any, minor: Any) -> None:
        node = self._node(handle)
        gpu = node if isinstance(node, FakeGpu) else node.parent
        _set(major, gpu.compute_capability[0])
        _set(minor, gpu.compute_capability[1])

    # --- memory and processes ----------------------------------------------------------------------------------

    def _memory(self, handle: Any) -> tuple[int, int, int]:
        """(total, reserved, allocated) MiB of a GPU or of a MIG device (its GPU instance's, shared by its CIs)."""
        node = self._node(handle)
        if isinstance(node, FakeGpu):
            return node.memory_mb, node.reserved_mb, sum(p.get("used_memory_mb", 0) for p in node.processes)
        gi = node.gpu_instance
        return gi.profile.memory_mb, gi.reserved_mb, gi.used_memory_mb

    def nvmlDeviceGetMemoryInfo(self, handle: Any, ref: Any) -> None:
        total, reserved, allocated = self._memory(handle)
        used = reserved + allocated  # nvml.h nvmlMemory_t: "Sum of Reserved and Allocated device memory"
        ref._obj.total, ref._obj.used, ref._obj.free = total * MIB, used * MIB, (total - used) * MIB

    def nvmlDeviceGetMemoryInfo_v2(self, handle: Any, ref: Any) -> None:
        if ref._obj.version != pynvml.nvmlMemory_v2:
            raise _Return(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        total, reserved, allocated = self._memory(handle)
        memory = ref._obj
        memory.total, memory.reserved, memory.used = total * MIB, reserved * MIB, allocated * MIB
        memory.free = (total - reserved - allocated) * MIB

    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle: Any, count: Any, infos: Any) -> None:
        node = self._node(handle)
        if isinstance(node, FakeGpu):
            if node.mig_on and not self.machine.root:
                # nvml.h: on a MIG parent the aggregate list is returned "only if the caller has appropriate
                # privileges"; per-instance lists come from the MIG device handles.
                raise _Return(pynvml.NVML_ERROR_NO_PERMISSION)
            processes = node.processes
        else:
            processes = node.processes()
        too_small = infos is None or count._obj.value < len(processes)  # pynvml's first call asks for the size
        _set(count, len(processes))
        if too_small and processes:
            raise _Return(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)
        for k, process in enumerate(processes if not too_small else []):
            infos[k].pid = process["pid"]
            infos[k].usedGpuMemory = process.get("used_memory_mb", 0) * MIB
            infos[k].gpuInstanceId = process.get("gpu_instance_id", NO_INSTANCE_ID)
            infos[k].computeInstanceId = process.get("compute_instance_id", NO_INSTANCE_ID)

    # --- MIG mode and MIG devices ------------------------------------------------------------------------------

    def nvmlDeviceGetMigMode(self, handle: Any, current: Any, pending: Any) -> None:
        gpu = self._gpu(handle)
        if gpu.mig_mode is None:
            raise _Return(pynvml.NVML_ERROR_NOT_SUPPORTED)
        _set(current, gpu.mig_mode[0])
        _set(pending, gpu.mig_mode[1])

    def nvmlDeviceSetMigMode(self, handle: Any, mode: Any, status: Any) -> None:
        gpu = self._gpu(handle, mig_capable=True)
        assert gpu.mig_mode is not None
        wanted = _int(mode)
        if gpu.mig_on and wanted == 0 and gpu.gpu_instances:
            raise _Return(pynvml.NVML_ERROR_IN_USE)
        gpu.mig_mode = (gpu.mig_mode[0], wanted)
        held = gpu.mode_change_blocked or bool(gpu.processes)
        if not gpu.needs_reset and not held:
            gpu.mig_mode = (wanted, wanted)  # Hopper and later apply it at once when nothing holds the GPU
        _set(status, pynvml.NVML_SUCCESS if gpu.mig_mode[0] == wanted else pynvml.NVML_ERROR_IN_USE)

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any, ref: Any) -> None:
        gpu = self._gpu(handle)  # nvml.h: zero when MIG is not supported or not enabled
        _set(ref, gpu.max_mig_devices if gpu.mig_on else 0)

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: Any, ref: Any) -> None:
        gpu = self._gpu(handle)
        if not gpu.mig_on:
            raise _Return(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if not 0 <= _int(index) < gpu.max_mig_devices:
            raise _Return(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if _int(index) not in gpu.mig_devices:
            raise _Return(pynvml.NVML_ERROR_NOT_FOUND)
        self._write_handle(ref, gpu.mig_devices[_int(index)])

    def nvmlDeviceGetGpuInstanceId(self, handle: Any, ref: Any) -> None:
        _set(ref, self._mig(handle).gpu_instance_id)

    def nvmlDeviceGetComputeInstanceId(self, handle: Any, ref: Any) -> None:
        _set(ref, self._mig(handle).compute_instance_id)

    def nvmlDeviceGetAttributes_v2(self, handle: Any, ref: Any) -> None:
        node = self._node(handle)
        if not isinstance(node, FakeMigDevice):
            raise _Return(pynvml.NVML_ERROR_NOT_SUPPORTED)  # nvml.h: only MIG device handles are supported
        attrs, profile = ref._obj, node.profile
        attrs.multiprocessorCount, attrs.memorySizeMB = node.sms, profile.memory_mb
        attrs.gpuInstanceSliceCount, attrs.computeInstanceSliceCount = profile.slices, node.slices
        attrs.sharedCopyEngineCount = profile.slices

    # --- GPU-instance profiles ---------------------------------------------------------------------------------

    def _profile_at(self, handle: Any, index: Any) -> Profile:
        if not 0 <= _int(index) < pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT:
            raise _Return(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self._gpu(handle, mig_capable=True)
        if not gpu.mig_settled and not self.machine.profiles_when_mig_off:
            # nvml.h: "NVML_ERROR_NOT_SUPPORTED If device doesn't have MIG mode enabled" (R535 also while pending).
            raise _Return(pynvml.NVML_ERROR_NOT_SUPPORTED)
        profile = next((p for p in gpu.profiles if p.index == _int(index)), None)
        if profile is None:
            raise _Return(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return profile

    @staticmethod
    def _fill_profile(info: Any, profile: Profile) -> None:
        info.id, info.sliceCount = profile.id, profile.slices
        info.instanceCount = profile.reported_max if profile.reported_max is not None else profile.max
        info.multiprocessorCount, info.memorySizeMB = profile.sms, profile.memory_mb
        info.copyEngineCount = profile.slices

    def nvmlDeviceGetGpuInstanceProfileInfoV(self, handle: Any, index: Any, ref: Any) -> None:
        profile, info = self._profile_at(handle, index), ref._obj
        if info.version != pynvml.nvmlGpuInstanceProfileInfo_v2:  # the V call checks its struct version
            raise _Return(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        self._fill_profile(info, profile)
        info.name = f"MIG {profile.name}".encode()

    def nvmlDeviceGetGpuInstanceProfileInfo(self, handle: Any, index: Any, ref: Any) -> None:
        self._fill_profile(ref._obj, self._profile_at(handle, index))  # v1: no version, no name field

    def nvmlDeviceGetGpuInstancePossiblePlacements_v2(
        self, handle: Any, profile_id: Any, placements: Any, count: Any
    ) -> None:
        # nvml.h: answered "regardless of whether MIG is enabled", for MIG-capable GPUs (needs root).
        gpu = self._gpu(handle, mig_capable=True)
        profile = next((p for p in gpu.profiles if p.id == _int(profile_id)), None)
        if profile is None:
            raise _Return(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if placements is not None:  # NULL only asks how many placements there are
            if count._obj.value < len(profile.placements):
                _set(count, len(profile.placements))
                raise _Return(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)
            array = getattr(placements, "_obj", placements)
            for k, start in enumerate(profile.placements):
                array[k].start, array[k].size = start, profile.size
        _set(count, len(profile.placements))

    # --- GPU instances -----------------------------------------------------------------------------------------

    def _create_gi(self, gpu: FakeGpu, profile_id: Any, start: int | None, ref: Any) -> None:
        profile = next((p for p in gpu.profiles if p.id == _int(profile_id)), None)
        if profile is None:
            raise _Return(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        used, compute_used = gpu.used_spans(), sum(gi.profile.slices for gi in gpu.gpu_instances.values())
        same = sum(gi.profile.id == profile.id for gi in gpu.gpu_instances.values())
        if same >= profile.max or compute_used + profile.slices > gpu.compute_slices():
            raise _Return(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)
        memory_slices = max(p.placements[-1] + p.size for p in gpu.profiles)
        candidates = _driver_order(profile, memory_slices) if start is None else [start]
        free = [s for s in candidates if not set(range(s, s + profile.size)) & used]
        if not free:
            raise _Return(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)
        gi_id = next(i for i in range(1, 64) if i not in gpu.gpu_instances)
        gi = FakeGpuInstance(gi_id, profile, free[0], gpu)
        gpu.gpu_instances[gi_id] = gi
        self._register(gi)
        self._write_handle(ref, gi)

    def nvmlDeviceCreateGpuInstance(self, handle: Any, profile_id: Any, ref: Any) -> None:
        self._create_gi(self._managed(handle), profile_id, None, ref)

    def nvmlDeviceCreateGpuInstanceWithPlacement(self, handle: Any, profile_id: Any, placement: Any, ref: Any) -> None:
        gpu = self._managed(handle)
        wanted = getattr(placement, "_obj", placement)
        profile = next((p for p in gpu.profiles if p.id == _int(profile_id)), None)
        if profile is None or wanted.start not in profile.placements or wanted.size != profile.size:
            raise _Return(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self._create_gi(gpu, profile_id, int(wanted.start), ref)

    def nvmlDeviceGetGpuInstances(self, handle: Any, profile_id: Any, array: Any, count: Any) -> None:
        gpu = self._managed(handle)
        if not any(p.id == _int(profile_id) for p in gpu.profiles):
            raise _Return(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        found = [gi for gi in gpu.gpu_instances.values() if gi.profile.id == _int(profile_id)]
        if count._obj.value < len(found):
            _set(count, len(found))
            raise _Return(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)
        self._write_handles(array, found)
        _set(count, len(found))

    def nvmlDeviceGetGpuInstanceById(self, handle: Any, gi_id: Any, ref: Any) -> None:
        gpu = self._managed(handle)
        if _int(gi_id) not in gpu.gpu_instances:
            raise _Return(pynvml.NVML_ERROR_NOT_FOUND)
        self._write_handle(ref, gpu.gpu_instances[_int(gi_id)])

    def nvmlGpuInstanceGetInfo(self, handle: Any, ref: Any) -> None:
        gi, info = self._gi(handle), ref._obj
        ctypes.c_void_p.from_buffer(info, type(info).device.offset).value = self.address[id(gi.gpu)]
        info.id, info.profileId = gi.id, gi.profile.id
        info.placement.start, info.placement.size = gi.start, gi.profile.size

    def nvmlGpuInstanceDestroy(self, handle: Any) -> None:
        gi = self._gi(handle)
        if gi.compute_instances:  # nvml.h: IN_USE while compute instances (or processes) are active on it
            raise _Return(pynvml.NVML_ERROR_IN_USE)
        del gi.gpu.gpu_instances[gi.id]
        self._forget(gi)

    # --- compute instances -------------------------------------------------------------------------------------

    def nvmlGpuInstanceGetComputeInstanceProfileInfoV(self, handle: Any, index: Any, engine: Any, ref: Any) -> None:
        gi, info = self._gi(handle), ref._obj
        if info.version != pynvml.nvmlComputeInstanceProfileInfo_v2:
            raise _Return(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        slices = _CI_PROFILE_SLICES.get(_int(index))
        if slices is None or slices > gi.profile.slices:  # (which sizes a GI allows is simplified here)
            raise _Return(pynvml.NVML_ERROR_NOT_SUPPORTED)
        info.id, info.sliceCount, info.instanceCount = _int(index), slices, gi.profile.slices // slices
        info.multiprocessorCount = FakeMigDevice("", 0, slices, gi, 0).sms
        name = gi.profile.name if slices == gi.profile.slices else f"{slices}c.{gi.profile.name}"
        info.name = f"MIG {name}".encode()

    def nvmlGpuInstanceCreateComputeInstance(self, handle: Any, ci_profile_id: Any, ref: Any) -> None:
        gi = self._gi(handle)
        slices = _CI_PROFILE_SLICES.get(_int(ci_profile_id))
        if slices is None or slices > gi.profile.slices:
            raise _Return(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if sum(ci.slices for ci in gi.compute_instances.values()) + slices > gi.profile.slices:
            raise _Return(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)
        gpu = gi.gpu
        ci_id = next(i for i in range(8) if i not in gi.compute_instances)
        uuid = f"MIG-{gpu.index:08x}-{gi.id:04x}-{ci_id:04x}-0000-{len(self.address):012x}"
        device = FakeMigDevice(uuid, ci_id, slices, gi, _free_slot(gpu))
        gi.compute_instances[ci_id] = device
        gpu.mig_devices[device.slot] = device
        self._register(device)
        self._write_handle(ref, device)

    def nvmlGpuInstanceGetComputeInstances(self, handle: Any, ci_profile_id: Any, array: Any, count: Any) -> None:
        gi = self._gi(handle)
        slices = _CI_PROFILE_SLICES.get(_int(ci_profile_id))
        found = [ci for ci in gi.compute_instances.values() if ci.slices == slices]
        if count._obj.value < len(found):
            _set(count, len(found))
            raise _Return(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)
        self._write_handles(array, found)
        _set(count, len(found))

    def nvmlComputeInstanceDestroy(self, handle: Any) -> None:
        node = self.node_at.get(_pointer_value(handle))
        if not isinstance(node, FakeMigDevice):
            raise _Return(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self._check(node.parent)
        if node.processes():
            raise _Return(pynvml.NVML_ERROR_IN_USE)
        del node.gpu_instance.compute_instances[node.compute_instance_id]
        del node.parent.mig_devices[node.slot]
        self._forget(node)


class FakeNvmlLib:
    """What ``pynvml.nvmlLib`` holds: C symbols found by attribute lookup, as on a ``ctypes.CDLL``.

    ``calls`` lists the symbols called; ``initialized`` is the init depth (0 once each init had its shutdown);
    ``loads`` counts library loads. ``reset_gpu`` stands for ``nvidia-smi -r``.
    """

    def __init__(self, machine: FakeMachine) -> None:
        self.machine = machine
        self.calls: list[str] = []
        self.initialized = 0
        self.loads = 0
        self._symbols = _Symbols(machine)

    def reset_gpu(self, index: int) -> bool:
        """A GPU reset (``nvidia-smi -r -i N``): applies a pending MIG mode unless something holds the GPU.

        Instances do not survive a reset. Returns False (nothing changed) when processes or a daemon hold the GPU."""
        gpu = self.machine.gpus[index]
        if gpu.mig_mode is None or gpu.processes or gpu.mode_change_blocked:
            return False
        for gi in list(gpu.gpu_instances.values()):
            for ci in list(gi.compute_instances.values()):
                del gpu.mig_devices[ci.slot]
                self._symbols._forget(ci)
            self._symbols._forget(gi)
        gpu.gpu_instances.clear()
        gpu.mig_mode = (gpu.mig_mode[1], gpu.mig_mode[1])
        return True

    def __getattr__(self, name: str) -> Callable[..., Any]:
        # Only reached for names not set on the instance: CDLL's symbol lookup.
        if name.startswith("_"):
            raise AttributeError(name)
        implementation = getattr(self._symbols, name, None) if name.startswith("nvml") else None
        if name in self.machine.missing_symbols or (implementation is None and name not in _LIFECYCLE):
            raise AttributeError(f"libnvidia-ml.so.1: undefined symbol: {name}")

        def c_function(*args: Any) -> Any:
            self.calls.append(name)
            if name == "nvmlErrorString":  # pynvml sets restype=c_char_p on it: return a C string
                return f"NVML error {_int(args[0])}".encode()
            if name == "nvmlInitWithFlags":
                self.initialized += self.machine.init_error is None
                return self.machine.init_error or pynvml.NVML_SUCCESS
            if self.initialized == 0:
                return pynvml.NVML_ERROR_UNINITIALIZED
            if name in self.machine.errors:
                return self.machine.errors[name]
            if name == "nvmlShutdown":
                self.initialized -= 1
                return pynvml.NVML_SUCCESS
            self._symbols.current_symbol = name
            try:
                code = implementation(*args)  # type: ignore[misc]
            except _Return as returned:
                code = returned.args[0]
            return pynvml.NVML_SUCCESS if code is None else code

        self.__dict__[name] = c_function  # cached like CDLL's, so pynvml may set .restype on it
        return c_function


def install_fake_nvml(monkeypatch: pytest.MonkeyPatch, fixture: str | dict[str, Any]) -> FakeNvmlLib:
    """Make the real pynvml talk to a fake NVML described by ``fixture`` until the test ends.

    ``fixture`` is a file stem under ``tests/fixtures/nvml`` (``"a100_80gb_mixed"``) or a dict in that format.
    ``"library_missing"`` makes loading ``libnvidia-ml.so.1`` fail, so pynvml raises LibraryNotFound;
    ``"driver_not_loaded"`` makes ``nvmlInit`` return DriverNotLoaded. Returns the fake library (it records calls).
    """
    fake = FakeNvmlLib(load_machine(fixture))

    def load_library(path: str, *args: Any, **kwargs: Any) -> FakeNvmlLib:
        if fake.machine.library_missing:
            raise OSError(f"{path}: cannot open shared object file: No such file or directory")
        fake.loads += 1
        return fake

    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setattr(pynvml, "CDLL", load_library)
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    monkeypatch.setattr(pynvml, "_nvmlLib_refcount", 0)
    return fake
