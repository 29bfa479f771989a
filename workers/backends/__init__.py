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


class PartialBatchFailure(Exception):
    """Some texts of a batch were computed and some failed (one too large for the device's memory even alone).

    ``vectors`` holds a row per text of the batch, None where it failed; ``failures`` maps those rows to the error
    their requests get. The batcher answers the computed texts and fails only the requests of the failed ones.
    """

    def __init__(self, vectors: list[np.ndarray | None], failures: dict[int, Exception]) -> None:
        super().__init__(f"{len(failures)} of {len(vectors)} texts failed")
        self.vectors = vectors
        self.failures = failures
