"""One seam for every NVML call: pynvml's exceptions become ``NvmlCallError`` carrying nvml.h's return code.

As nvitop's ``nvmlQuery`` does, callers reason about NVML error codes, never about pynvml's classes (which differ
between nvidia-ml-py releases: 12.535 has no ``NVMLLibraryMismatchError``, gpu-audit C1). Nothing here imports
pynvml: ``Nvml`` wraps the module the probe imported.
"""

from __future__ import annotations

from typing import Any

# nvml.h return codes (a fixed ABI; pynvml exposes the same values as NVML_ERROR_*).
UNINITIALIZED = 1
INVALID_ARGUMENT = 2
NOT_SUPPORTED = 3
NO_PERMISSION = 4
NOT_FOUND = 6
INSUFFICIENT_SIZE = 7
DRIVER_NOT_LOADED = 9
LIBRARY_NOT_FOUND = 12
FUNCTION_NOT_FOUND = 13
GPU_IS_LOST = 15
LIB_RM_VERSION_MISMATCH = 18
IN_USE = 19
INSUFFICIENT_RESOURCES = 23
UNKNOWN = 999


class NvmlCallError(Exception):
    """One NVML call failed. ``code`` is the nvml.h return code; ``str()`` is ``"<call>: <NVML's message>"``."""

    def __init__(self, call: str, code: int, message: str) -> None:
        super().__init__(f"{call}: {message}")
        self.call = call
        self.code = code
        self.message = message


class Nvml:
    """The pynvml module behind one helper per failure policy, plus the warnings collected on the way."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.warnings: list[str] = []

    def call(self, function: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``pynvml.<function>``; any failure becomes ``NvmlCallError``."""
        nvml = self.module
        # pynvml's unversioned wrappers (nvmlDeviceGetComputeRunningProcesses...) turn FunctionNotFound into this
        # class, which is not an NVMLError; nvidia-ml-py 12.535 does not have it at all (C1).
        mismatch = getattr(nvml, "NVMLLibraryMismatchError", None)
        try:
            return getattr(nvml, function)(*args, **kwargs)
        except nvml.NVMLError as error:
            raise NvmlCallError(function, int(error.value), str(error)) from None
        except Exception as error:
            if mismatch is not None and isinstance(error, mismatch):
                raise NvmlCallError(function, FUNCTION_NOT_FOUND, str(error)) from None
            raise

    def optional(self, default: Any, where: str, function: str, *args: Any, quiet: tuple[int, ...] = ()) -> Any:
        """Call, or return ``default``: silently for codes in ``quiet``, else with a warning. A lost GPU re-raises."""
        try:
            return self.call(function, *args)
        except NvmlCallError as error:
            if error.code == GPU_IS_LOST:
                raise
            if error.code not in quiet:
                self.warnings.append(f"{where}: {error}")
            return default
