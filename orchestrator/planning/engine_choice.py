"""Pure choices of precision and attention per device, and the refusals of impossible overrides.

TEI refuses Qwen3 anywhere but CUDA with fp16 and flash attention (seed 000). Here every family runs everywhere.
``auto`` picks, on CUDA: bfloat16 for a model trained in bfloat16 on a GPU that computes it natively (compute
capability 8.0+), float16 otherwise; flash_attention_2 when flash-attn is usable and the GPU is sm80+ (FA2's floor),
sdpa otherwise. On CPU: fp32 + sdpa. Eager for architectures without sdpa (MPNet).

The planner calls it without the device's capability (it has not seen the GPU); the replica calls it again with what
it measured on its device, so the final choice is made where the GPU is seen. An explicit override that cannot work
is refused, in one line, instead of failing inside a forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

# Architectures whose transformers implementation lacks sdpa / flash attention (transformers 5.x).
NO_SDPA = frozenset({"mpnet"})
NO_FLASH = frozenset({"mpnet", "bert"})
# Architectures whose torch.onnx (dynamo) export was checked to give the same vectors as PyTorch. Qwen3 fails in
# torch.export (step 1 of 3) with torch 2.13 / transformers 5.24, so it stays on PyTorch.
ONNX_FAMILIES = frozenset({"bert", "mpnet"})
# Architectures whose transformers class declares no ``_no_split_modules``: a device map could cut a layer between
# its attention and its residual add, so they are not split across GPUs.
NO_DEVICE_MAP = frozenset({"mpnet"})


class EngineChoiceError(ValueError):
    """An override that cannot work on this device or model; the message says which and what to use."""


# FlashAttention-2 and native bfloat16 matmuls start with Ampere (sm80).
AMPERE = (8, 0)


@dataclass(frozen=True)
class EngineChoice:
    """The precision and attention chosen; ``note`` says why flash attention was not chosen where it could have been
    (empty otherwise), for the one log line the replica writes."""

    dtype: str
    attn_implementation: str
    note: str = ""


def choose_engine(
    device: str,
    model_type: str,
    dtype: str = "auto",
    attention: str = "auto",
    flash_available: bool = False,
    *,
    compute_capability: tuple[int, int] | None = None,
    trained_dtype: str | None = None,
) -> EngineChoice:
    """Precision and attention for ``model_type`` on ``device`` (``cpu`` or ``cuda``), honouring overrides.

    ``flash_available``: flash-attn is usable here (in a replica: transformers accepts it and its CUDA extension
    imports). ``compute_capability``: the GPU's (None: not known yet, as when planning). ``trained_dtype``: the
    ``torch_dtype`` of the model's config.json.

    Raises EngineChoiceError for flash attention on CPU, without flash-attn or below sm80, for bfloat16 below sm80,
    for an attention the architecture lacks, and for float16 on CPU (slow, and not every CPU kernel has it).
    """
    on_gpu = device != "cpu"
    before_ampere = compute_capability is not None and tuple(compute_capability) < AMPERE
    this_gpu = f"this GPU is {compute_capability[0]}.{compute_capability[1]}" if compute_capability else ""
    if dtype == "auto":
        if not on_gpu:
            dtype = "float32"
        elif trained_dtype == "bfloat16" and compute_capability is not None and not before_ampere:
            dtype = "bfloat16"  # its weights and activations keep their range; float16 may overflow them (W8)
        else:
            dtype = "float16"
    elif dtype == "float16" and not on_gpu:
        raise EngineChoiceError("dtype float16 on a CPU pool: use float32 (or bfloat16 on CPUs with AVX-512 BF16)")
    elif dtype == "bfloat16" and on_gpu and before_ampere:
        raise EngineChoiceError(
            f"dtype bfloat16 needs a GPU of compute capability 8.0 or newer ({this_gpu}): use float16 or auto"
        )
    note = ""
    if attention == "auto":
        flash_fits = on_gpu and model_type not in NO_FLASH and dtype in ("float16", "bfloat16")
        if flash_fits and flash_available and not before_ampere:
            attention = "flash_attention_2"
        else:
            if flash_fits and not flash_available:
                note = "flash-attn is not usable here"
            elif flash_fits:
                note = f"flash_attention_2 needs compute capability 8.0 or newer, {this_gpu}"
            attention = "eager" if model_type in NO_SDPA else "sdpa"
    elif attention == "flash_attention_2":
        if not on_gpu:
            raise EngineChoiceError("attn_implementation flash_attention_2 on a CPU pool: use sdpa or auto")
        if model_type in NO_FLASH:
            raise EngineChoiceError(f"{model_type} has no flash_attention_2 in transformers: use sdpa or auto")
        if dtype == "float32":
            raise EngineChoiceError("flash_attention_2 needs float16 or bfloat16, not float32")
        if not flash_available:
            raise EngineChoiceError(
                "flash_attention_2 requested but flash-attn does not import here: pip install "
                "'mig-orchestrator[gpu]' on the GPU node, or use auto"
            )
        if before_ampere:
            raise EngineChoiceError(
                f"flash_attention_2 needs a GPU of compute capability 8.0 or newer ({this_gpu}): use sdpa or auto"
            )
    elif attention == "sdpa" and model_type in NO_SDPA:
        raise EngineChoiceError(f"{model_type} has no sdpa attention in transformers: use eager or auto")
    return EngineChoice(dtype=dtype, attn_implementation=attention, note=note)


def valid_tensor_parallel_sizes(attention_heads: int, key_value_heads: int | None = None) -> list[int]:
    """Sizes that split both the attention heads and the key-value heads evenly (seed 004)."""
    kv = key_value_heads or attention_heads
    return [size for size in range(1, attention_heads + 1) if attention_heads % size == 0 and kv % size == 0]


def check_tensor_parallel(size: int, attention_heads: int | None, key_value_heads: int | None) -> None:
    """Raise EngineChoiceError unless ``size`` divides the heads; list the valid sizes."""
    if size == 1:
        return
    if attention_heads is None:
        raise EngineChoiceError(f"tensor_parallel_size {size}: the model config states no num_attention_heads")
    valid = valid_tensor_parallel_sizes(attention_heads, key_value_heads)
    if size not in valid:
        kv = key_value_heads or attention_heads
        raise EngineChoiceError(
            f"tensor_parallel_size {size} does not divide the model's {attention_heads} attention heads and {kv} "
            f"key-value heads; valid sizes: {', '.join(map(str, valid))}"
        )
    raise EngineChoiceError(
        f"tensor_parallel_size {size} is valid for this model but serving one instance across GPUs is not "
        "implemented yet: use 1 (one replica per slice or GPU; gpus: N on a type: gpu instance splits the layers "
        "over N whole GPUs instead)"
    )


def check_device_map(gpus: int, model_type: str, accelerate_available: bool) -> None:
    """Raise EngineChoiceError when an instance spanning ``gpus`` whole GPUs cannot be split: accelerate missing,
    or an architecture without no-split layer classes (NO_DEVICE_MAP)."""
    if gpus <= 1:
        return
    if model_type in NO_DEVICE_MAP:
        raise EngineChoiceError(
            f"gpus: {gpus}: {model_type} declares no layers that must stay whole (_no_split_modules), so it is not "
            "split across GPUs: use gpus: 1"
        )
    if not accelerate_available:
        raise EngineChoiceError(
            f"gpus: {gpus} splits the model with accelerate, which does not import here: pip install "
            "'mig-orchestrator[gpu]' (or accelerate) on the GPU node, or use gpus: 1"
        )


@dataclass(frozen=True)
class BackendChoice:
    backend: str
    reason: str


def choose_backend(
    device: str, model_type: str, backend: str = "auto", quantize: str = "none", onnx_available: bool = True
) -> BackendChoice:
    """Which backend serves ``model_type`` on ``device``, with the one-line reason shown to the user.

    auto: ONNX Runtime on CPU pools for the families it exports, PyTorch otherwise. Raises EngineChoiceError for
    onnx on a GPU or on a family it cannot export, and for int8 without the onnx backend.
    """
    on_gpu = device != "cpu"
    exportable = model_type in ONNX_FAMILIES
    if backend == "onnx" and on_gpu:
        raise EngineChoiceError("backend onnx runs on CPU pools only; GPU instances use torch (fp16, flash or sdpa)")
    if backend == "onnx" and not onnx_available:
        raise EngineChoiceError("backend onnx: onnxruntime, onnx or onnxscript is not installed (pip install -e .)")
    if backend == "onnx" and not exportable:
        raise EngineChoiceError(
            f"backend onnx: {model_type} models cannot be exported to ONNX here (supported: "
            f"{', '.join(sorted(ONNX_FAMILIES))}); use backend: torch or auto"
        )
    if backend == "auto":
        if on_gpu:
            choice = BackendChoice("torch", "GPU instances run PyTorch (half precision)")
        elif exportable and not onnx_available:
            choice = BackendChoice("torch", "PyTorch on CPU pools: onnxruntime/onnx/onnxscript are not installed")
        elif exportable:
            choice = BackendChoice("onnx", f"ONNX Runtime on CPU pools ({model_type} exports to ONNX)")
        else:
            choice = BackendChoice("torch", f"PyTorch on CPU pools: {model_type} does not export to ONNX here")
    else:
        choice = BackendChoice(backend, f"{backend} as configured")
    if quantize == "int8" and choice.backend != "onnx":
        raise EngineChoiceError("quantize int8 needs the onnx backend on CPU pools (dynamic int8 in ONNX Runtime)")
    return choice
