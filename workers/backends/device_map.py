"""A balanced device map for one model over several whole GPUs, computed without loading a weight (seed 003).

The model is built on the meta device from its ``config.json``; accelerate's ``get_balanced_memory`` spreads its
size evenly over the devices and ``infer_auto_device_map`` assigns modules in order, never cutting a module whose
class the model lists in ``_no_split_modules`` (a decoder layer: its residual adds need every part on one device).
``TorchBackend`` then loads the weights with that map; transformers dispatches them and keeps the model's
``_skip_keys_device_placement`` (caches) where they are.

accelerate is imported only here, and only for an instance that spans several GPUs (the ``gpu`` extra). It needs no
CUDA: with ``max_memory`` given, integer device keys are only compared and summed (on a machine without a GPU,
accelerate 1.x merely logs that the devices are not available), so the map can be tested on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

# Memory kept free on every device for the CUDA context, activations of a token-budgeted batch and fragmentation.
DEFAULT_HEADROOM_FRACTION = 0.15


class DeviceMapError(RuntimeError):
    """The model cannot be placed on the devices; the one-line message says why and what to change."""


def _mib(size: float) -> str:
    mib = size / 2**20
    return f"{mib:,.0f} MiB" if mib >= 10 else f"{mib:.2f} MiB"


def balanced_device_map(
    folder: Path,
    dtype: str,
    device_memory_bytes: Sequence[int],
    headroom_fraction: float = DEFAULT_HEADROOM_FRACTION,
) -> dict[str, int]:
    """Place the model in ``folder`` (weights in ``dtype``: float32, float16 or bfloat16) over
    ``len(device_memory_bytes)`` CUDA devices, device i offering ``device_memory_bytes[i]`` bytes, of which
    ``headroom_fraction`` is kept free.

    Returns the device map: module name -> device index, covering every module in order (the embeddings come
    first, so device 0 holds them whenever they fit there); modules of a no-split class are never divided.

    Raises DeviceMapError (one line) when accelerate is missing, when the model declares no no-split classes, or
    when the devices are too small; ValueError for a headroom outside [0, 1) or no device.
    """
    if not 0 <= headroom_fraction < 1:
        raise ValueError(f"headroom_fraction must be in [0, 1), not {headroom_fraction}")
    if not device_memory_bytes:
        raise ValueError("device_memory_bytes names no device")
    try:
        from accelerate import infer_auto_device_map, init_empty_weights
        from accelerate.utils import compute_module_sizes, get_balanced_memory
    except ImportError:
        raise DeviceMapError(
            "spanning several GPUs needs accelerate: pip install 'mig-orchestrator[gpu]' (or accelerate)"
        ) from None
    import torch
    from transformers import AutoConfig, AutoModel

    torch_dtype = getattr(torch, dtype)
    config = AutoConfig.from_pretrained(folder)
    with init_empty_weights():
        # Built in the serving dtype: accelerate sizes a tensor by the smaller of its own dtype and the one it is
        # given, so a model built in the config's (often bfloat16) dtype would be undercounted for float32.
        model = AutoModel.from_config(config, dtype=torch_dtype)
    # transformers 5 keeps a set (older versions a list, or None); accelerate wants a list.
    no_split = sorted(model._no_split_modules or ())
    if not no_split:
        raise DeviceMapError(
            f"{type(model).__name__} declares no layers that must stay whole (_no_split_modules): it cannot be "
            "split across GPUs safely; use gpus: 1"
        )
    usable = {index: int(size * (1 - headroom_fraction)) for index, size in enumerate(device_memory_bytes)}
    balanced = get_balanced_memory(model, max_memory=dict(usable), no_split_module_classes=no_split, dtype=torch_dtype)
    device_map = infer_auto_device_map(model, max_memory=balanced, no_split_module_classes=no_split, dtype=torch_dtype)
    # Without a "cpu" entry accelerate sends what does not fit to "disk": for a replica that means too little memory.
    if any(not isinstance(device, int) for device in device_map.values()):
        needed = compute_module_sizes(model, dtype=torch_dtype)[""]
        each = ", ".join(_mib(size) for size in usable.values())
        raise DeviceMapError(
            f"the model needs about {_mib(needed)} of {dtype} weights but the {len(usable)} GPU(s) offer "
            f"{_mib(sum(usable.values()))} after {headroom_fraction:.0%} headroom ({each}), and no layer is split: "
            "raise gpus, or free memory on them"
        )
    return {name: int(device) for name, device in device_map.items()}


def visible_free_memory() -> list[int]:
    """Free bytes on each CUDA device this process sees (after pinning), in device order."""
    import torch

    return [int(torch.cuda.mem_get_info(index)[0]) for index in range(torch.cuda.device_count())]
