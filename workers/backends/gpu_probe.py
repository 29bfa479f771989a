"""What the pinned GPU and this environment allow, looked at in the replica's own process after pinning: the
device's compute capability, whether flash attention really works here, and the precision the model was trained in.

Finding the ``flash_attn`` package is not enough (gpu-audit B5): FlashAttention-4 installs a package of that name
too, an install built for another torch fails only when its CUDA extension loads, and FA2 needs sm80. So flash
attention counts as usable only when transformers accepts the installed distribution (``flash-attn`` >= 2.3.3) and
the compiled extension ``flash_attn_2_cuda`` imports; the capability is compared by ``engine_choice``.
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

FLASH_EXTENSION = "flash_attn_2_cuda"
FLASH_NOT_INSTALLED = "flash-attn is not installed"


@dataclass(frozen=True)
class GpuFacts:
    """Device 0 of this (pinned) process.

    Attributes:
        name: the CUDA device name (``NVIDIA H100 80GB HBM3 MIG 1g.10gb``...).
        capability: the compute capability, e.g. (9, 0).
        flash_problem: why flash attention cannot be used here, or None when it can.
    """

    name: str
    capability: tuple[int, int]
    flash_problem: str | None


def flash_attention_problem() -> str | None:
    """Why flash_attention_2 cannot be used in this process, or None when transformers accepts flash-attn and its
    CUDA extension imports. Imports the extension (loading its kernels): call it in a replica, not when planning."""
    from transformers.utils import is_flash_attn_2_available

    if importlib.util.find_spec("flash_attn") is None:
        return FLASH_NOT_INSTALLED
    if not is_flash_attn_2_available():
        return "transformers does not accept the installed flash_attn (it needs the flash-attn 2 distribution >= 2.3.3)"
    try:
        importlib.import_module(FLASH_EXTENSION)
    except Exception as error:  # ImportError, or an OSError/undefined symbol from a build for another torch or CUDA
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"flash-attn's CUDA extension does not load ({type(error).__name__}: {first_line})"
    return None


def probe_gpu() -> GpuFacts:
    """The facts of CUDA device 0 (after pinning, the instance's device). Starts CUDA in this process."""
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return GpuFacts(torch.cuda.get_device_name(0), (int(major), int(minor)), flash_attention_problem())


def trained_dtype(folder: Path) -> str | None:
    """The dtype the model's config.json says its weights are in (``torch_dtype``, or transformers 5's ``dtype``)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = config.get("torch_dtype") or config.get("dtype")
    return str(value) if value else None
