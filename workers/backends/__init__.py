"""The embedding backend interface: what every backend (``torch_backend``, ``onnx_backend``) offers the batcher.

A backend turns batches of token ids into unnormalised float32 vectors. It holds no queue and no HTTP state: the
batcher calls ``embed`` from a worker thread with batches it already sorted by length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class BackendInfo:
    """What /info reports about the loaded model."""

    dimensions: int
    dtype: str
    device: str
    backend: str
    attn_implementation: str = "n/a"


class EmbeddingBackend(Protocol):
    """Computes pooled vectors for a batch of token id lists."""

    info: BackendInfo

    def embed(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Return an array (len(batch), dimensions) of float32, not normalised."""
        ...


def pad_batch(batch: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[np.ndarray, np.ndarray]:
    """Pad token ids on ``side`` into (ids, attention mask) int64 arrays."""
    width = max(len(ids) for ids in batch)
    input_ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, ids in enumerate(batch):
        columns = slice(0, len(ids)) if side == "right" else slice(width - len(ids), width)
        input_ids[row, columns] = ids
        mask[row, columns] = 1
    return input_ids, mask
