"""How much GPU memory one instance needs, and the largest ``max_batch_tokens`` a given memory allows (gpu-audit B3).

Pure: the model's shape (``model_source.ModelShape``, from its ``config.json``), sizes in bytes, results in MiB.

    need = weights + CUDA context + max_concurrency x (activations of the largest batch)

* **Weights**: parameters x bytes per weight in the serving dtype. The parameter count is the one measured from the
  weight files when the caller has it, else counted from the config (embeddings, attention, MLP per layer).
* **CUDA context**: ``CUDA_CONTEXT_MIB`` = 640 MiB. A CUDA 12 context with torch's lazily loaded kernels takes about
  500 MiB of device memory on A100/H100 (PyTorch forum and NVIDIA's MIG user guide examples report 300-600 MiB;
  gpu-audit B3 took ~0.5 GiB), and it lives inside the slice; 128 MiB more cover the cuBLAS/cuBLASLt workspaces
  torch allocates per stream on Hopper. Not yet measured by this project: ``python -m workers.selftest`` reports the
  real figure per slice.
* **Activations** of one forward pass over T padded tokens (no key/value cache: ``use_cache=False``). Inference
  frees each layer's tensors before the next, so the peak is one layer's: the residual stream and its normalised
  copy, the attention projections in flight (4 x hidden in all) and the MLP's three intermediate-wide tensors
  (gate, up and their product: 3 x intermediate), per token. Plus the attention mask: sdpa on a padded batch gets a
  (batch, 1, L, L) boolean mask that torch turns into an additive one of the model's dtype, i.e. T x L x
  (1 + dtype bytes) for texts of L tokens. The largest batch has T = max(max_batch_tokens, max_input_tokens) tokens
  (one text is never cut, even past the budget) with L = max_input_tokens at most. ``ALLOCATOR_SLACK`` (10 %) covers
  the caching allocator's rounding and fragmentation between differently shaped batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from orchestrator.model_source import ModelShape

MIB = 2**20
CUDA_CONTEXT_MIB = 640
ALLOCATOR_SLACK = 1.10
BATCH_TOKENS_STEP = 256  # the largest max_batch_tokens is reported rounded down to this


@dataclass(frozen=True)
class MemoryEstimate:
    """An instance's GPU memory, in MiB."""

    weights_mib: float
    context_mib: float
    activations_mib: float

    @property
    def total_mib(self) -> float:
        return self.weights_mib + self.context_mib + self.activations_mib


def estimate_memory(
    shape: ModelShape,
    dtype_bytes: int,
    max_batch_tokens: int,
    max_concurrency: int,
    max_input_tokens: int,
    parameters: int | None = None,
) -> MemoryEstimate:
    """The memory one instance needs with these batching limits (``parameters``: measured count, else counted)."""
    weights = (parameters if parameters is not None else shape.parameter_count()) * dtype_bytes
    return MemoryEstimate(
        weights_mib=weights / MIB,
        context_mib=float(CUDA_CONTEXT_MIB),
        activations_mib=_activation_bytes(shape, dtype_bytes, max_batch_tokens, max_input_tokens)
        * max_concurrency
        / MIB,
    )


def _activation_bytes(shape: ModelShape, dtype_bytes: int, max_batch_tokens: int, max_input_tokens: int) -> float:
    tokens = max(max_batch_tokens, max_input_tokens)
    longest = max_input_tokens
    per_pass = tokens * shape.activation_bytes_per_token(dtype_bytes) + tokens * longest * (1 + dtype_bytes)
    return per_pass * ALLOCATOR_SLACK


def largest_max_batch_tokens(
    shape: ModelShape,
    dtype_bytes: int,
    max_concurrency: int,
    max_input_tokens: int,
    memory_mib: float,
    parameters: int | None = None,
) -> int | None:
    """The largest ``max_batch_tokens`` (a multiple of ``BATCH_TOKENS_STEP``, at least ``max_input_tokens``) whose
    estimate fits ``memory_mib``; None when even one text of ``max_input_tokens`` does not fit."""
    fixed = estimate_memory(shape, dtype_bytes, 0, max_concurrency, 0, parameters)
    room_bytes = (memory_mib - fixed.weights_mib - fixed.context_mib) * MIB / max_concurrency / ALLOCATOR_SLACK
    per_token = shape.activation_bytes_per_token(dtype_bytes) + max_input_tokens * (1 + dtype_bytes)
    tokens = math.floor(room_bytes / per_token) if room_bytes > 0 else 0
    if tokens < max_input_tokens:
        return None
    return max(max_input_tokens, tokens // BATCH_TOKENS_STEP * BATCH_TOKENS_STEP)


def largest_max_input_tokens(
    shape: ModelShape, dtype_bytes: int, max_concurrency: int, memory_mib: float, parameters: int | None = None
) -> int:
    """The longest text (in tokens, a multiple of 64) a batch of one may hold within ``memory_mib``; 0 if none."""
    low, high = 0, shape.max_position_embeddings
    while low < high:  # the estimate grows with the length: bisect
        middle = (low + high + 1) // 2
        fits = estimate_memory(shape, dtype_bytes, middle, max_concurrency, middle, parameters).total_mib <= memory_mib
        low, high = (middle, high) if fits else (low, middle - 1)
    return low // 64 * 64


def fit_problem(
    shape: ModelShape,
    dtype: str,
    max_batch_tokens: int,
    max_concurrency: int,
    max_input_tokens: int,
    memory_mib: float,
    where: str,
    parameters: int | None = None,
) -> str | None:
    """None when the instance fits ``memory_mib`` (the slice's or GPU's usable memory) at ``where`` (``1g.10gb on
    GPU 0``), else the one-line reason with what to change: a smaller ``max_batch_tokens`` (the largest that fits),
    a shorter ``max_input_tokens``, or a bigger slice when the weights alone do not fit."""
    dtype_bytes = 4 if dtype == "float32" else 2
    estimate = estimate_memory(shape, dtype_bytes, max_batch_tokens, max_concurrency, max_input_tokens, parameters)
    if estimate.total_mib <= memory_mib:
        return None
    need = (
        f"the model needs about {estimate.total_mib:,.0f} MiB ({estimate.weights_mib:,.0f} of {dtype} weights, "
        f"{estimate.context_mib:,.0f} CUDA context, {estimate.activations_mib:,.0f} for {max_concurrency} batch(es) "
        f"of {max(max_batch_tokens, max_input_tokens)} tokens) but {where} has {memory_mib:,.0f} MiB"
    )
    if estimate.weights_mib + estimate.context_mib >= memory_mib:
        return f"{need}: the weights alone do not fit, choose a bigger profile"
    largest = largest_max_batch_tokens(shape, dtype_bytes, max_concurrency, max_input_tokens, memory_mib, parameters)
    if largest is not None:
        return f"{need}: set batching.max_batch_tokens to {largest} or less, or choose a bigger profile"
    longest = largest_max_input_tokens(shape, dtype_bytes, max_concurrency, memory_mib, parameters)
    return (
        f"{need}: even one text of {max_input_tokens} tokens does not fit; set model.max_input_tokens to {longest} "
        "or less (and max_batch_tokens no lower), or choose a bigger profile"
    )
