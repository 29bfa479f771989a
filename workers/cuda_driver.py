"""The few CUDA driver API calls the GPU pin check needs, through ctypes: whether the driver is already initialised
in this process, and each visible device's UUID as ``cuDeviceGetUuid_v2`` reports it.

``cuDeviceGetUuid_v2`` (CUDA >= 11.4) gives a MIG slice its own UUID (the ``MIG-...`` one NVML and
``CUDA_VISIBLE_DEVICES`` use); the v1 call gives the parent GPU's, and the runtime's ``cudaDeviceProp.uuid`` is not
documented to be either. Nothing here creates a context: ``driver_initialised`` only asks ``cuDeviceGetCount``,
which answers ``CUDA_ERROR_NOT_INITIALIZED`` until someone has called ``cuInit``.
"""

from __future__ import annotations

import ctypes
import uuid
from typing import Any

LIBRARY = "libcuda.so.1"
CUDA_SUCCESS = 0
CUDA_ERROR_NOT_INITIALIZED = 3


class CudaDriverError(RuntimeError):
    """A driver API call returned an error code (kept in ``code``)."""

    def __init__(self, call: str, code: int) -> None:
        super().__init__(f"{call} returned CUDA error {code}")
        self.code = code


def open_driver() -> Any | None:
    """The CUDA driver library of this machine, or None when there is none (no NVIDIA driver installed)."""
    try:
        return ctypes.CDLL(LIBRARY)
    except OSError:
        return None


def _check(call: str, code: int) -> None:
    if code != CUDA_SUCCESS:
        raise CudaDriverError(call, code)


def driver_initialised(driver: Any) -> bool:
    """Whether ``cuInit`` has already run in this process (it fixes the visible devices for the process's life).

    Raises CudaDriverError for an answer other than success or not-initialised.
    """
    count = ctypes.c_int(0)
    code = driver.cuDeviceGetCount(ctypes.byref(count))
    if code == CUDA_ERROR_NOT_INITIALIZED:
        return False
    _check("cuDeviceGetCount", code)
    return True


def device_uuids_v2(driver: Any) -> list[str] | None:
    """The UUID of each device this process sees, in CUDA order, as ``cuDeviceGetUuid_v2`` gives it (lower-case
    ``xxxxxxxx-xxxx-...``, no ``MIG-``/``GPU-`` prefix); None when the driver predates that call.

    Initialises the driver (``cuInit``): call it only after ``CUDA_VISIBLE_DEVICES`` is set. Raises CudaDriverError.
    """
    try:
        get_uuid = driver.cuDeviceGetUuid_v2
    except AttributeError:  # ctypes raises it for a symbol the library does not export
        return None
    _check("cuInit", driver.cuInit(0))
    count = ctypes.c_int(0)
    _check("cuDeviceGetCount", driver.cuDeviceGetCount(ctypes.byref(count)))
    uuids = []
    for ordinal in range(count.value):
        device = ctypes.c_int(0)  # CUdevice is an int handle
        _check("cuDeviceGet", driver.cuDeviceGet(ctypes.byref(device), ordinal))
        raw = (ctypes.c_ubyte * 16)()  # CUuuid: 16 bytes
        _check("cuDeviceGetUuid_v2", get_uuid(ctypes.byref(raw), device))
        uuids.append(str(uuid.UUID(bytes=bytes(raw))))
    return uuids
