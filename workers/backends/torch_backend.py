"""The PyTorch backend: a transformers encoder (or decoder) on a CPU pool, a GPU or MIG slice, or GPUs with a
device map, pooled on the device where its states are."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from workers.backends import BackendInfo, pad_batch

logger = logging.getLogger(__name__)


# Models that derive positions from the input ids themselves (RoBERTa-style, padding-aware).
_POSITIONS_FROM_IDS = frozenset({"mpnet", "roberta", "xlm-roberta", "camembert"})


_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def _describe_devices(device_map: Mapping[str, int | str]) -> str:
    """``cuda:0,1`` for a map over CUDA devices 0 and 1 (what /info shows)."""
    devices = sorted({str(device) for device in device_map.values()})
    return "cuda:" + ",".join(devices) if all(d.isdigit() for d in devices) else ",".join(devices)


def load_placement(
    device: str, device_map: Mapping[str, int | str] | None, accelerate_available: bool
) -> dict[str, dict[str, int | str]]:
    """The placement arguments of ``from_pretrained``: the given device map; ``{"": device}`` for one GPU, so that
    transformers materialises each weight directly there (it needs accelerate for any device_map, and loads on the
    host then moves without it, as it does on CPU); nothing for the CPU, where the host is the device."""
    if device_map is not None:
        return {"device_map": dict(device_map)}
    if device == "cpu":
        return {}
    if not accelerate_available:
        logger.warning(
            "accelerate is not installed: the model is loaded in host memory, then moved to %s (pip install "
            "'mig-orchestrator[gpu]' to load it straight onto the GPU)",
            device,
        )
        return {}
    return {"device_map": {"": device}}


class TorchBackend:
    """A transformers encoder (or decoder) run under torch.inference_mode with pooling from the model card."""

    def __init__(
        self,
        folder: Path,
        pooling: str,
        dtype: str = "float32",
        device: str = "cpu",
        attn_implementation: str = "sdpa",
        padding_side: str = "right",
        device_map: Mapping[str, int | str] | None = None,
    ) -> None:
        """Load the model in ``dtype`` with ``attn_implementation`` (chosen by orchestrator/planning/engine_choice.py).

        With ``device_map`` (module name -> device, from ``device_map.py``) the model is split over several
        devices instead of moved to ``device``: inputs go where the embeddings are, pooling runs where the last
        hidden state comes out.
        """
        import torch
        from transformers import AutoConfig, AutoModel

        torch_dtype = getattr(torch, _DTYPES[dtype])
        model_config = AutoConfig.from_pretrained(folder)
        pad = getattr(model_config, "pad_token_id", None)
        eos = getattr(model_config, "eos_token_id", None)
        fallback = eos[0] if isinstance(eos, list) and eos else eos
        self._pad_id = int(pad if pad is not None else (fallback or 0))
        placement = load_placement(device, device_map, importlib.util.find_spec("accelerate") is not None)
        if device_map is None:
            # On a GPU the weights go from the file straight to the device (placement {"": device}): no full copy in
            # host memory per replica at start-up, which seven replicas of one GPU would each make (gpu-audit W12).
            self._model = AutoModel.from_pretrained(
                folder, dtype=torch_dtype, attn_implementation=attn_implementation, **placement
            )
            if not placement:
                self._model.to(device)
            self._model.eval()
        else:
            # transformers dispatches the weights with accelerate's hooks (activations follow the layers from device
            # to device) and leaves the model's _skip_keys_device_placement where they are.
            self._model = AutoModel.from_pretrained(
                folder, dtype=torch_dtype, attn_implementation=attn_implementation, **placement
            )
            self._model.eval()
            device = str(self._model.get_input_embeddings().weight.device)
        # An embedding pass never decodes further: without this, decoder models (Qwen3) build a key/value cache of
        # every layer for every batch, memory that a 1g slice does not have to spare (gpu-audit B3).
        self._model.config.use_cache = False
        self._pooling = pooling
        self._device = device
        self._padding_side = padding_side
        # Left padding shifts every row's positions unless the model derives them from the mask itself.
        self._explicit_positions = padding_side == "left" and model_config.model_type not in _POSITIONS_FROM_IDS
        self.info = BackendInfo(
            dimensions=int(model_config.hidden_size),
            dtype=dtype,
            device=device if device_map is None else _describe_devices(device_map),
            backend="torch",
            attn_implementation=attn_implementation,
        )

    def embed(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Vectors of ``batch``; a batch that runs the device out of memory is split and retried (``oom_split``)."""
        from workers.backends.oom_split import embed_splitting_on_oom

        return embed_splitting_on_oom(self._embed_once, batch, self.info.device)

    def _embed_once(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        import torch

        from workers.backends.pooling import pool

        input_ids, mask = pad_batch(batch, self._pad_id, self._padding_side)
        with torch.inference_mode():
            ids_tensor = torch.from_numpy(input_ids).to(self._device)
            mask_tensor = torch.from_numpy(mask).to(self._device)
            extra = {}
            if self._explicit_positions:
                extra["position_ids"] = (mask_tensor.cumsum(1) - 1).clamp(min=0)
            hidden = self._model(input_ids=ids_tensor, attention_mask=mask_tensor, **extra).last_hidden_state
            if hidden.device != mask_tensor.device:  # a model split over GPUs may answer from its last one
                mask_tensor = mask_tensor.to(hidden.device)
            pooled = pool(hidden, mask_tensor, self._pooling)
            return pooled.float().cpu().numpy()
