"""Binding a replica process to its CPU pool (cores and compute threads) or to its GPU devices (a MIG slice, or one
or more whole GPUs).

The GPU pin sets CUDA_VISIBLE_DEVICES and then proves it took: it refuses to pin a process whose CUDA already
started with other devices (the variable would be ignored), and recognises each visible device by the UUID the
runtime reports or, where that is the parent GPU's, by the one ``cuDeviceGetUuid_v2`` reports (gpu-audit W1).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.contracts.plan import GpuBinding
from workers import cuda_driver

logger = logging.getLogger(__name__)


def pin_to_cpu_pool(cores: Sequence[int], threads: int, torch_threads: bool = True) -> tuple[int, ...]:
    """Restrict this process to ``cores`` and (``torch_threads``) torch to ``threads`` intra-op threads and one
    inter-op thread; the ONNX backend sizes its own session and never imports torch.

    Returns the cores actually granted (the intersection with what the process may use). Must run before the
    model computes anything, because torch fixes its inter-op pool at first use.
    """
    granted: tuple[int, ...] = tuple(cores)
    if cores and hasattr(os, "sched_setaffinity"):
        allowed = os.sched_getaffinity(0)
        wanted = set(cores) & allowed or allowed
        os.sched_setaffinity(0, wanted)
        granted = tuple(sorted(wanted))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if not torch_threads:
        return granted
    import torch

    torch.set_num_threads(threads)
    # Fails when already set or already used: harmless, the intra-op count is what matters.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    return granted


class PinningError(RuntimeError):
    """The replica does not see exactly the devices its plan names, or CUDA started before it could be pinned."""


@dataclass(frozen=True)
class VisibleDevice:
    """One CUDA device as this process sees it after pinning.

    Attributes:
        runtime_uuid: what torch reports (``cudaDeviceProp.uuid``): a MIG slice's own UUID or its parent GPU's.
        driver_uuid: ``cuDeviceGetUuid_v2`` (a MIG slice's own UUID); None where the driver API is not reachable.
        total_memory_mb: the device's memory as CUDA reports it; None when not read.
    """

    runtime_uuid: str
    driver_uuid: str | None = None
    total_memory_mb: int | None = None


# How far CUDA's total memory of a MIG slice may be from NVML's before the parent-UUID fallback refuses it. A
# slice's sibling of another profile differs by at least a factor of two; the whole parent GPU by more.
SLICE_MEMORY_TOLERANCE = 0.05


def _bare_uuid(uuid: str) -> str:
    """``MIG-1b85...`` / ``GPU-1e44...`` / ``1b85...`` -> ``1b85...`` (lower case)."""
    text = uuid.strip().lower()
    for prefix in ("mig-", "gpu-"):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def _describe(device: VisibleDevice) -> str:
    if device.driver_uuid is None or _bare_uuid(device.driver_uuid) == _bare_uuid(device.runtime_uuid):
        return device.runtime_uuid
    return f"{device.runtime_uuid} (driver UUID {device.driver_uuid})"


def check_pinned_devices(
    expected_uuids: Sequence[str],
    devices: Sequence[VisibleDevice],
    parent_uuid: str | None = None,
    memory_mb: int | None = None,
) -> str:
    """Raise PinningError unless the visible devices are exactly the planned ones, in the planned order (device i
    of the device map must be the i-th planned GPU); return how they were recognised.

    A device is recognised by its runtime or its driver (v2) UUID. Only when neither is readable as the slice's own
    UUID (the runtime reports the parent GPU's and the driver API is unavailable) is one planned MIG slice accepted
    as the single visible device whose runtime UUID is ``parent_uuid`` and whose memory is ``memory_mb`` (within
    ``SLICE_MEMORY_TOLERANCE``): CUDA_VISIBLE_DEVICES named the slice, and the whole GPU would show more memory.
    """
    wanted = len(expected_uuids)
    if len(devices) != wanted:
        count = "exactly one CUDA device" if wanted == 1 else f"exactly {wanted} CUDA devices"
        seen = ", ".join(_describe(device) for device in devices) or "none"
        raise PinningError(
            f"expected to see {count} ({', '.join(expected_uuids)}), saw {len(devices)}: {seen} "
            "(was CUDA initialised before CUDA_VISIBLE_DEVICES was set?)"
        )
    how = "runtime UUID"
    for index, (device, expected) in enumerate(zip(devices, expected_uuids, strict=True)):
        bare = _bare_uuid(expected)
        if _bare_uuid(device.runtime_uuid) == bare:
            continue
        if device.driver_uuid is not None and _bare_uuid(device.driver_uuid) == bare:
            how = "driver UUID (cuDeviceGetUuid_v2)"
            continue
        if _is_the_slice_by_memory(expected, device, wanted, parent_uuid, memory_mb):
            how = f"parent GPU UUID and slice memory ({device.total_memory_mb} MiB)"
            continue
        where = "" if wanted == 1 else f" as CUDA device {index}"
        raise PinningError(
            f"landed on device {_describe(device)}{where}, but the plan pins this instance to {expected}"
        )
    return how


def _is_the_slice_by_memory(
    expected: str, device: VisibleDevice, wanted: int, parent_uuid: str | None, memory_mb: int | None
) -> bool:
    if wanted != 1 or not expected.lower().startswith("mig-") or device.driver_uuid is not None:
        return False
    if parent_uuid is None or memory_mb is None or device.total_memory_mb is None:
        return False
    if _bare_uuid(device.runtime_uuid) != _bare_uuid(parent_uuid):
        return False
    return abs(device.total_memory_mb - memory_mb) <= SLICE_MEMORY_TOLERANCE * memory_mb


def check_visible_devices(expected_uuids: Sequence[str], visible_uuids: Sequence[str]) -> None:
    """Raise PinningError unless ``visible_uuids`` are exactly the planned ones, in the planned order."""
    check_pinned_devices(expected_uuids, [VisibleDevice(uuid) for uuid in visible_uuids])


def check_visible_device(expected_uuid: str, visible_uuids: Sequence[str]) -> None:
    """Raise PinningError unless exactly one device is visible and its UUID is the planned one."""
    check_visible_devices((expected_uuid,), visible_uuids)


def refuse_if_cuda_started(joined: str) -> None:
    """Raise PinningError when CUDA already started in this process with other visible devices than ``joined``.

    CUDA reads CUDA_VISIBLE_DEVICES once, when the driver initialises (``cuInit``: any torch.cuda call that counts
    or uses devices, ``torch.cuda.is_available()`` included), so a pin set afterwards would silently not apply.
    """
    already = os.environ.get("CUDA_VISIBLE_DEVICES")
    if already == joined:  # whatever started CUDA saw the devices this pin wants
        return
    torch = sys.modules.get("torch")  # never imported here just to ask: importing torch does not start CUDA
    started_by = None
    if torch is not None and torch.cuda.is_initialized():
        started_by = "torch"
    else:
        driver = cuda_driver.open_driver()
        if driver is not None and cuda_driver.driver_initialised(driver):
            started_by = "a CUDA driver call (cuInit)"
    if started_by is not None:
        seen = f"CUDA_VISIBLE_DEVICES={already}" if already is not None else "every GPU of the machine"
        raise PinningError(
            f"CUDA was initialised in this process ({started_by}) before it was pinned to {joined}: CUDA reads "
            f"CUDA_VISIBLE_DEVICES once, so this process would use {seen}; pin before anything touches torch.cuda "
            "(even torch.cuda.is_available())"
        )


def visible_devices() -> list[VisibleDevice]:
    """Every CUDA device this process sees: torch's UUID and memory, and the driver's v2 UUID where readable."""
    import torch

    count = torch.cuda.device_count()
    driver_uuids: list[str] | None = None
    driver = cuda_driver.open_driver()
    if driver is not None:
        try:
            driver_uuids = cuda_driver.device_uuids_v2(driver)
        except cuda_driver.CudaDriverError as error:  # the runtime UUID may still settle it
            logger.warning("cannot read device UUIDs through the CUDA driver API: %s", error)
    if driver_uuids is not None and len(driver_uuids) != count:
        logger.warning("the CUDA driver lists %d devices, torch %d: driver UUIDs ignored", len(driver_uuids), count)
        driver_uuids = None
    devices = []
    for index in range(count):
        properties = torch.cuda.get_device_properties(index)
        devices.append(
            VisibleDevice(
                runtime_uuid=str(properties.uuid),
                driver_uuid=driver_uuids[index] if driver_uuids is not None else None,
                total_memory_mb=int(properties.total_memory) // 2**20,
            )
        )
    return devices


def pin_to_gpu_devices(
    device_uuids: Sequence[str], parent_uuid: str | None = None, memory_mb: int | None = None
) -> str:
    """Make ``device_uuids`` (one MIG or GPU UUID, or several whole-GPU UUIDs) the CUDA devices 0..n-1 of this
    process, in that order, then verify it; return how the devices were recognised (see ``check_pinned_devices``,
    which ``parent_uuid`` and ``memory_mb``, the slice's parent GPU and memory, serve).

    Must run before anything initialises CUDA in the process: CUDA reads CUDA_VISIBLE_DEVICES once. Raises
    PinningError when CUDA already started with other devices, and when torch sees anything but exactly those
    devices.
    """
    joined = ",".join(device_uuids)
    refuse_if_cuda_started(joined)
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    os.environ["CUDA_VISIBLE_DEVICES"] = joined
    import torch

    if not torch.cuda.is_available():
        raise PinningError(f"CUDA is not available in this replica (pinned to {joined}); is the driver visible?")
    return check_pinned_devices(device_uuids, visible_devices(), parent_uuid, memory_mb)


def pin_to_gpu_device(device_uuid: str) -> str:
    """Make ``device_uuid`` (a MIG or GPU UUID) the only CUDA device of this process (see ``pin_to_gpu_devices``)."""
    return pin_to_gpu_devices((device_uuid,))


def pin_to_binding(gpu: GpuBinding) -> str:
    """Pin to a planned binding; a MIG slice may be recognised by its parent GPU and its memory (see above)."""
    parent = gpu.gpu_uuid if gpu.kind == "mig" else None
    return pin_to_gpu_devices(gpu.device_uuids, parent, gpu.memory_mb)
