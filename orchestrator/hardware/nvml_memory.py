"""Memory of one GPU device (a MIG slice or a whole GPU) by UUID, for the per-instance metrics.

A MIG handle reports the slice's own memory (``nvmlDeviceGetMemoryInfo`` works per instance). NVML stays
initialised for the life of the probe, since a replica asks about once a second. Any failure reads as unknown
(None), never as an error on the serving path.
"""

from __future__ import annotations

import contextlib
from typing import Any


class DeviceMemoryProbe:
    """``probe()`` -> (used bytes, total bytes) of the device with ``uuid``, or (None, None)."""

    def __init__(self, uuid: str) -> None:
        self._uuid = uuid
        self._nvml: Any = None
        self._handle: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
        except Exception:  # no driver, no such device: metrics say "unknown"
            self.close()

    def probe(self) -> tuple[int | None, int | None]:
        if self._handle is None:
            return None, None
        try:
            info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        except self._nvml.NVMLError:
            return None, None
        return int(info.used), int(info.total)

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
        self._nvml = self._handle = None
