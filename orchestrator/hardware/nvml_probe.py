"""GPU discovery through NVML (``nvidia-ml-py``). The only module that imports pynvml.

Every NVML call goes through ``_nvml_call`` so that a missing library, an unloaded driver or an unsupported query
becomes one readable line instead of a traceback.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TypeVar

from orchestrator.hardware.topology import GpuInfo

logger = logging.getLogger(__name__)
T = TypeVar("T")


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used on this machine; the message says why in one line."""


def _nvml_call(function: Callable[..., T], *args: object) -> T:
    import pynvml

    try:
        return function(*args)
    except pynvml.NVMLError as error:
        raise NvmlUnavailable(f"NVML {function.__name__}: {error}") from None


def probe_gpus() -> tuple[GpuInfo, ...]:
    """List the physical GPUs. Raises NvmlUnavailable when NVML or its driver is missing."""
    try:
        import pynvml
    except ImportError:
        raise NvmlUnavailable("the nvidia-ml-py package is not installed") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        raise NvmlUnavailable(f"no NVIDIA driver ({error})") from None
    try:
        count = _nvml_call(pynvml.nvmlDeviceGetCount)
        gpus = []
        for index in range(count):
            handle = _nvml_call(pynvml.nvmlDeviceGetHandleByIndex, index)
            memory = _nvml_call(pynvml.nvmlDeviceGetMemoryInfo, handle)
            gpus.append(
                GpuInfo(
                    index=index,
                    name=str(_nvml_call(pynvml.nvmlDeviceGetName, handle)),
                    uuid=str(_nvml_call(pynvml.nvmlDeviceGetUUID, handle)),
                    memory_mb=int(memory.total // (1024 * 1024)),
                )
            )
        return tuple(gpus)
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
