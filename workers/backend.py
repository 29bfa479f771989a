"""The embedding backend interface and its PyTorch implementation.

A backend turns batches of token ids into unnormalised float32 vectors. It holds no queue and no HTTP state: the
batcher calls ``embed`` from a worker thread with batches it already sorted by length.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendInfo:
    """What /info reports about the loaded model."""

    dimensions: int
    dtype: str
    device: str
    backend: str


class EmbeddingBackend(Protocol):
    """Computes pooled vectors for a batch of token id lists."""

    info: BackendInfo

    def embed(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Return an array (len(batch), dimensions) of float32, not normalised."""
        ...


def pad_batch(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token ids into (ids, attention mask) int64 arrays."""
    width = max(len(ids) for ids in batch)
    input_ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    return input_ids, mask


_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


class TorchBackend:
    """A transformers encoder (or decoder) run under torch.inference_mode with pooling from the model card."""

    def __init__(self, folder: Path, pooling: str, dtype: str = "auto", device: str = "cpu") -> None:
        import torch
        from transformers import AutoConfig, AutoModel

        if dtype == "auto":
            dtype = "float32" if device == "cpu" else "float16"
        torch_dtype = getattr(torch, _DTYPES[dtype])
        model_config = AutoConfig.from_pretrained(folder)
        self._pad_id = int(getattr(model_config, "pad_token_id", None) or 0)
        self._model = AutoModel.from_pretrained(folder, dtype=torch_dtype, attn_implementation="sdpa").to(device)
        self._model.eval()
        self._pooling = pooling
        self._device = device
        self.info = BackendInfo(dimensions=int(model_config.hidden_size), dtype=dtype, device=device, backend="torch")

    def embed(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        import torch

        from workers.pooling import pool

        input_ids, mask = pad_batch(batch, self._pad_id)
        with torch.inference_mode():
            ids_tensor = torch.from_numpy(input_ids).to(self._device)
            mask_tensor = torch.from_numpy(mask).to(self._device)
            hidden = self._model(input_ids=ids_tensor, attention_mask=mask_tensor).last_hidden_state
            pooled = pool(hidden, mask_tensor, self._pooling)
            return pooled.float().cpu().numpy()
