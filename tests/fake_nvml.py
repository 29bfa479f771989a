"""A fake ``libnvidia-ml.so.1`` for the real pynvml wrappers to run over, fed from JSON fixtures.

``install_fake_nvml`` (see shared/reference/mig-nvml.md section 6) resets ``pynvml.nvmlLib``, clears
``_nvmlGetFunctionPointer_cache`` and gives pynvml a ``CDLL`` that returns a ``FakeNvmlLib`` (or raises ``OSError``:
no driver), all via ``monkeypatch``; pynvml's loading, structs, ``_nvmlCheckReturn`` and exceptions run as on a GPU.
As NVML does, the fake writes outputs through ``byref`` arguments (``arg._obj``) and string buffers and returns
errors as ``NVML_ERROR_*`` ints; a symbol not implemented (or in a fixture's ``missing_symbols``) raises
``AttributeError`` like ``CDLL``, which pynvml reports as ``FunctionNotFound`` (an old driver); outside an
init/shutdown pair, calls return ``Uninitialized``.

Fixture (``tests/fixtures/nvml/<stem>.json``): ``driver_version``, ``cuda_driver_version``, ``gpus`` (``model`` = a
key of ``profiles.json`` or null, ``name``, ``uuid``, ``memory_mb``, ``mig_mode`` = [current, pending] or null if the
GPU cannot do MIG, ``mig_devices``, ``processes``, optional ``lost`` and ``errors`` = {symbol: error}); machine-level
``init_error``, ``library: "missing"``, ``missing_symbols``, ``errors``. Errors are pynvml's class names without
``NVMLError_`` (``GpuIsLost``). Layouts are validated on load (``FixtureError``): no impossible GPU.
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


@dataclass
class FakeGpu:
    """A physical GPU of the fixture; ``mig_devices`` maps MIG-device slot to device."""

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
    mig_devices: dict[int, FakeMigDevice] = field(default_factory=dict)

    @property
    def mig_on(self) -> bool:
        return self.mig_mode is not None and self.mig_mode[0] == 1


@dataclass
class FakeMigDevice:
    """An existing MIG device (a GPU instance with one full compute instance)."""

    uuid: str
    profile: Profile
    gpu_instance_id: int
    compute_instance_id: int
    used_memory_mb: int
    parent: FakeGpu


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


def _code(name: str) -> int:
    if name not in ERROR_CODES:
        raise FixtureError(f"unknown NVML error {name!r}; use one of {sorted(ERROR_CODES)}")
    return ERROR_CODES[name]


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
    devices = raw.get("mig_devices", [])
    if devices and not gpu.mig_on:
        raise FixtureError(f"GPU {index}: MIG devices exist only while MIG mode is currently enabled")
    used: set[int] = set()
    compute_left = max((p.slices for p in gpu.profiles), default=0)  # 7 on A100/H100/H200, 4 on A30
    for position, dev in enumerate(devices):
        profile = next((p for p in gpu.profiles if p.name == dev["profile"]), None)
        if profile is None or dev["start"] not in profile.placements:
            raise FixtureError(f"GPU {index}: no {dev['profile']} at memory slice {dev['start']} on a {model}")
        span = set(range(dev["start"], dev["start"] + profile.size))
        compute_left -= profile.slices
        slot, ids = dev.get("slot", position), (dev["gpu_instance_id"], dev["compute_instance_id"])
        too_many = compute_left < 0 or sum(d["profile"] == profile.name for d in devices) > profile.max
        reused = slot in gpu.mig_devices or ids[0] in {d.gpu_instance_id for d in gpu.mig_devices.values()}
        if span & used or too_many or reused or not 0 <= slot < gpu.max_mig_devices:
            raise FixtureError(f"GPU {index}: {profile.name} at {dev['start']} overlaps, exceeds or reuses an id")
        used |= span
        gpu.mig_devices[slot] = FakeMigDevice(dev["uuid"], profile, *ids, dev.get("used_memory_mb", 0), gpu)
    return gpu


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
    missing = frozenset(raw.get("missing_symbols", []))
    return FakeMachine(gpus, *versions, init_error, raw.get("library") == "missing", missing, errors)


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


class _Symbols:
    """The C functions, named as in nvml.h. Each returns None for success or raises ``_Return(error code)``."""

    def __init__(self, machine: FakeMachine) -> None:
        self.machine = machine
        self.current_symbol = ""
        # NVML handles are opaque pointers; here, distinct fake addresses that are never dereferenced.
        self.node_at: dict[int, FakeGpu | FakeMigDevice] = {}
        self.address: dict[int, int] = {}
        for gpu in machine.gpus:
            for offset, node in [(0, gpu), *((0x100 * (slot + 1), d) for slot, d in gpu.mig_devices.items())]:
                self.node_at[0x10000 * (gpu.index + 1) + offset] = node
                self.address[id(node)] = 0x10000 * (gpu.index + 1) + offset

    def _write_handle(self, ref: Any, node: FakeGpu | FakeMigDevice) -> None:
        ctypes.c_void_p.from_buffer(ref._obj).value = self.address[id(node)]

    def _node(self, handle: Any) -> FakeGpu | FakeMigDevice:
        node = self.node_at.get(ctypes.cast(handle, ctypes.c_void_p).value or 0)
        if node is None:
            raise _Return(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu = node if isinstance(node, FakeGpu) else node.parent
        if gpu.lost:
            raise _Return(pynvml.NVML_ERROR_GPU_IS_LOST)
        if self.current_symbol in gpu.errors:
            raise _Return(gpu.errors[self.current_symbol])
        return node

    def _gpu(self, handle: Any, mig_capable: bool = False) -> FakeGpu:
        node = self._node(handle)
        if not isinstance(node, FakeGpu):
            raise _Return(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if mig_capable and node.mig_mode is None:
            # nvml.h: profile and placement queries answer "regardless of whether MIG is enabled", if it is supported.
            raise _Return(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return node

    def _mig(self, handle: Any) -> FakeMigDevice:
        node = self._node(handle)
        if isinstance(node, FakeMigDevice):
            return node
        raise _Return(pynvml.NVML_ERROR_INVALID_ARGUMENT)  # e.g. a GI/CI id asked of a whole GPU

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
        nodes = [n for g in self.machine.gpus for n in (g, *g.mig_devices.values()) if not getattr(n, "lost", False)]
        match = next((node for node in nodes if node.uuid == wanted), None)
        if match is None:
            raise _Return(pynvml.NVML_ERROR_NOT_FOUND)
        self._write_handle(ref, match)

    def nvmlDeviceGetName(self, handle: Any, buffer: Any, length: Any) -> None:
        node = self._node(handle)
        name = node.name if isinstance(node, FakeGpu) else f"{node.parent.name} MIG {node.profile.name}"
        _write_str(buffer, length, name)

    def nvmlDeviceGetUUID(self, handle: Any, buffer: Any, length: Any) -> None:
        _write_str(buffer, length, self._node(handle).uuid)

    def nvmlDeviceGetMemoryInfo(self, handle: Any, ref: Any) -> None:
        node = self._node(handle)
        if isinstance(node, FakeGpu):
            total, used = node.memory_mb, sum(p.get("used_memory_mb", 0) for p in node.processes)
        else:  # a MIG handle: the instance's own memory
            total, used = node.profile.memory_mb, node.used_memory_mb
        ref._obj.total, ref._obj.used, ref._obj.free = total * MIB, used * MIB, (total - used) * MIB

    def nvmlDeviceGetMigMode(self, handle: Any, current: Any, pending: Any) -> None:
        gpu = self._gpu(handle)
        if gpu.mig_mode is None:
            raise _Return(pynvml.NVML_ERROR_NOT_SUPPORTED)
        _set(current, gpu.mig_mode[0])
        _set(pending, gpu.mig_mode[1])

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
        attrs.multiprocessorCount, attrs.memorySizeMB = profile.sms, profile.memory_mb
        attrs.gpuInstanceSliceCount = attrs.computeInstanceSliceCount = attrs.sharedCopyEngineCount = profile.slices

    def nvmlDeviceGetGpuInstanceProfileInfoV(self, handle: Any, index: Any, ref: Any) -> None:
        if not 0 <= _int(index) < pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT:
            raise _Return(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu, info = self._gpu(handle, mig_capable=True), ref._obj
        if info.version != pynvml.nvmlGpuInstanceProfileInfo_v2:  # the V call checks its struct version
            raise _Return(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        profile = next((p for p in gpu.profiles if p.index == _int(index)), None)
        if profile is None:
            raise _Return(pynvml.NVML_ERROR_NOT_SUPPORTED)
        info.id, info.sliceCount, info.instanceCount = profile.id, profile.slices, profile.max
        info.multiprocessorCount, info.memorySizeMB = profile.sms, profile.memory_mb
        info.copyEngineCount = profile.slices
        info.name = f"MIG {profile.name}".encode()

    def nvmlDeviceGetGpuInstancePossiblePlacements_v2(
        self, handle: Any, profile_id: Any, placements: Any, count: Any
    ) -> None:
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

    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle: Any, count: Any, infos: Any) -> None:
        processes = self._gpu(handle).processes
        too_small = infos is None or count._obj.value < len(processes)  # pynvml's first call asks for the size
        _set(count, len(processes))
        if too_small and processes:
            raise _Return(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)
        for k, process in enumerate(processes if not too_small else []):
            infos[k].pid = process["pid"]
            infos[k].usedGpuMemory = process.get("used_memory_mb", 0) * MIB
            infos[k].gpuInstanceId = process.get("gpu_instance_id", NO_INSTANCE_ID)
            infos[k].computeInstanceId = process.get("compute_instance_id", NO_INSTANCE_ID)


class FakeNvmlLib:
    """What ``pynvml.nvmlLib`` holds: C symbols found by attribute lookup, as on a ``ctypes.CDLL``.

    ``calls`` lists the symbols called; ``initialized`` is the init depth (0 once each init had its shutdown);
    ``loads`` counts library loads.
    """

    def __init__(self, machine: FakeMachine) -> None:
        self.machine = machine
        self.calls: list[str] = []
        self.initialized = 0
        self.loads = 0
        self._symbols = _Symbols(machine)

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
