"""Test doubles for the model: deterministic vectors computed from token ids, and a manual clock."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from workers.backend import BackendInfo


def fake_vector(tokens: Sequence[int], dimensions: int = 8) -> np.ndarray:
    """A vector that identifies its tokens: (length, sum, first, last, 1, ...)."""
    head = [len(tokens), sum(tokens) % 10007, tokens[0], tokens[-1]]
    return np.array((head + [1.0] * dimensions)[:dimensions], dtype=np.float32)


class FakeBackend:
    """Records every batch it is given; optionally blocks until released or fails on demand."""

    def __init__(self, dimensions: int = 8) -> None:
        self.info = BackendInfo(dimensions=dimensions, dtype="float32", device="cpu", backend="fake")
        self.batches: list[list[Sequence[int]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set when a batch reaches the model (before the gate)
        self.fail_next = False

    def embed(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        self.entered.set()
        self.gate.wait(timeout=10)
        self.batches.append(list(batch))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("simulated model failure")
        return np.stack([fake_vector(tokens, self.info.dimensions) for tokens in batch])


class ManualClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
