"""Test doubles for the model: deterministic vectors computed from token ids, and a manual clock."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from workers.backends import BackendInfo
from workers.batcher import Batcher
from workers.service import EmbeddingService, ServiceInfo
from workers.tokenizer import TextTokenizer


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


def fake_service(folder: Path, backend: FakeBackend | None = None, **overrides: Any) -> EmbeddingService:
    """One instance's service with the real tokenizer of ``folder`` and a fake model: small limits for tests.

    ``overrides`` replace ServiceInfo fields (max_input_tokens, max_inputs_per_request, request_timeout_s...);
    ``max_queued_texts`` and ``max_wait_ms`` go to the batcher.
    """
    backend = backend or FakeBackend(dimensions=8)
    max_queued = overrides.pop("max_queued_texts", 16)
    max_wait_ms = overrides.pop("max_wait_ms", 1)
    settings: dict[str, Any] = {
        "model_name": "all-MiniLM-L6-v2",
        "instance": "pool-0",
        "max_input_tokens": 32,
        "max_batch_tokens": 512,
        "max_inputs_per_request": 10,
        "max_request_bytes": 2000,
        "normalize_by_default": True,
        "pooling": "mean",
        "backend": backend.info,
        **overrides,
    }
    batcher = Batcher(backend.embed, 8, settings["max_batch_tokens"], max_wait_ms, max_queued)
    return EmbeddingService(TextTokenizer(folder, settings["max_input_tokens"]), batcher, ServiceInfo(**settings))
