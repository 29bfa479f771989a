"""A fake of the CUDA driver library as ctypes exposes it (``ctypes.CDLL("libcuda.so.1")``), for the pin check.

Strict where the real one is: every call returns a CUresult code and writes its answers through the pointer it was
given (``ctypes.byref`` of a ``c_int`` or of a 16-byte ``CUuuid`` buffer), device handles are passed by value, and
every call but ``cuInit`` answers CUDA_ERROR_NOT_INITIALIZED (3) until ``cuInit(0)`` ran. A driver older than
CUDA 11.4 lacks the ``cuDeviceGetUuid_v2`` symbol, which ctypes reports as AttributeError.
"""

from __future__ import annotations

import ctypes
import uuid
from typing import Any

CUDA_SUCCESS, CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_NOT_INITIALIZED, CUDA_ERROR_INVALID_DEVICE = 0, 1, 3, 101


def _target(pointer: Any, ctype: Any) -> Any:
    """The object a ``ctypes.byref`` argument points to, checked to be of the C type the real call writes."""
    target = getattr(pointer, "_obj", None)
    if target is None or ctypes.sizeof(target) != ctypes.sizeof(ctype):
        raise TypeError(f"expected ctypes.byref of a {ctype.__name__}, got {pointer!r}")
    return target


class FakeDriver:
    """``uuids_v2``: the MIG or GPU UUID of each visible device, as cuDeviceGetUuid_v2 answers."""

    def __init__(self, uuids_v2: list[str], has_v2: bool = True, init_error: int = CUDA_SUCCESS) -> None:
        self._uuids = [uuid.UUID(text.split("-", 1)[1]) for text in uuids_v2]
        self._init_error = init_error
        self.initialised = False
        if has_v2:
            self.cuDeviceGetUuid_v2 = self._get_uuid_v2

    def cuInit(self, flags: int) -> int:
        if flags != 0:
            return CUDA_ERROR_INVALID_VALUE
        if self._init_error:
            return self._init_error
        self.initialised = True
        return CUDA_SUCCESS

    def cuDeviceGetCount(self, count: Any) -> int:
        if not self.initialised:
            return CUDA_ERROR_NOT_INITIALIZED
        _target(count, ctypes.c_int).value = len(self._uuids)
        return CUDA_SUCCESS

    def cuDeviceGet(self, device: Any, ordinal: int) -> int:
        if not self.initialised:
            return CUDA_ERROR_NOT_INITIALIZED
        if not 0 <= ordinal < len(self._uuids):
            return CUDA_ERROR_INVALID_DEVICE
        _target(device, ctypes.c_int).value = ordinal
        return CUDA_SUCCESS

    def _get_uuid_v2(self, out: Any, device: Any) -> int:
        if not self.initialised:
            return CUDA_ERROR_NOT_INITIALIZED
        if not isinstance(device, ctypes.c_int) or not 0 <= device.value < len(self._uuids):
            return CUDA_ERROR_INVALID_DEVICE
        buffer = _target(out, ctypes.c_ubyte * 16)
        ctypes.memmove(buffer, self._uuids[device.value].bytes, 16)
        return CUDA_SUCCESS
