"""What a failed forward pass on a GPU means: a sticky CUDA error (the process's CUDA context is lost for good), an
out-of-memory (retry smaller), or anything else.

torch raises CUDA failures as ``torch.AcceleratorError`` (torch >= 2.8, the ``cudaError_t`` in ``error_code``) or as
a plain RuntimeError whose text carries ``cudaGetErrorString``'s words (older torch, cuBLAS, extensions such as
flash-attn); the caching allocator raises ``torch.OutOfMemoryError``. Both the code and the words are read.
"""

from __future__ import annotations

# cudaError_t values after which, per the CUDA runtime documentation, "the process is left in an inconsistent state
# and any further CUDA work will return the same error; the process must be terminated and relaunched" (700-719),
# plus an uncorrectable ECC or NVLink error, a device that became unavailable or vanished (Xid 79, "fallen off the
# bus"), a destroyed context and the driver's catch-all.
STICKY_CUDA_ERRORS = {
    46: "cudaErrorDevicesUnavailable",
    100: "cudaErrorNoDevice",
    214: "cudaErrorECCUncorrectable",
    220: "cudaErrorNvlinkUncorrectable",
    700: "cudaErrorIllegalAddress",
    702: "cudaErrorLaunchTimeout",
    709: "cudaErrorContextIsDestroyed",
    710: "cudaErrorAssert",
    714: "cudaErrorHardwareStackError",
    715: "cudaErrorIllegalInstruction",
    716: "cudaErrorMisalignedAddress",
    717: "cudaErrorInvalidAddressSpace",
    718: "cudaErrorInvalidPc",
    719: "cudaErrorLaunchFailure",
    999: "cudaErrorUnknown",
}
# cudaGetErrorString's words for the same errors, as they appear in torch's "CUDA error: ..." messages.
STICKY_CUDA_WORDS = (
    "busy or unavailable",
    "no cuda-capable device is detected",
    "uncorrectable ecc error",
    "uncorrectable nvlink error",
    "illegal memory access",
    "the launch timed out",
    "context is destroyed",
    "device-side assert",
    "hardware stack error",
    "illegal instruction",
    "misaligned address",
    "invalid address space",
    "invalid program counter",
    "unspecified launch failure",
    "cuda error: unknown error",
    "gpu has fallen off the bus",
)
OUT_OF_MEMORY_WORDS = ("cuda out of memory", "cuda error: out of memory", "cublas_status_alloc_failed")
CUDA_ERROR_MEMORY_ALLOCATION = 2  # cudaErrorMemoryAllocation: a kernel's own allocation failed (not sticky)


def sticky_cuda_error(error: BaseException) -> str | None:
    """The name of the sticky CUDA error ``error`` reports (its ``cudaError_t`` name, or the words that gave it
    away), or None for any other error."""
    code = getattr(error, "error_code", None)
    if isinstance(code, int) and code in STICKY_CUDA_ERRORS:
        return STICKY_CUDA_ERRORS[code]
    text = str(error).lower()
    if "cuda" not in text and "gpu" not in text:  # a model's own ValueError may say "illegal instruction" too
        return None
    return next((words for words in STICKY_CUDA_WORDS if words in text), None)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a device out-of-memory (the caching allocator's, a kernel's or cuBLAS's workspace)."""
    if type(error).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, without importing torch to ask
        return True
    if getattr(error, "error_code", None) == CUDA_ERROR_MEMORY_ALLOCATION:
        return True
    text = str(error).lower()
    return any(words in text for words in OUT_OF_MEMORY_WORDS)
