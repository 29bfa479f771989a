"""gpu-audit B3: a batch that runs the device out of memory is split and retried; only a text that cannot fit fails.

The device is a strict fake of the caching allocator's contract: a pass allocates its activations layer by layer,
an allocation beyond the capacity raises ``torch.OutOfMemoryError`` (the allocator's own class and words), and memory
is given back only when the tensors holding it die, so a retry made while the failed pass's frames are still alive
(as a traceback keeps them) finds less memory free, as on a real GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from orchestrator.contracts.errors import BackendFailure
from workers.backends.oom_split import embed_splitting_on_oom


class Block:
    def __init__(self, device: FakeDevice, units: int) -> None:
        self.device, self.units = device, units
        device.in_use += units

    def __del__(self) -> None:
        self.device.in_use -= self.units


class FakeDevice:
    """``capacity`` units of memory; a pass over n texts padded to w tokens holds two layers of n*w units at once."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.in_use, self.passes = capacity, 0, []

    def allocate(self, units: int) -> Block:
        import torch

        if self.in_use + units > self.capacity:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {units} units. GPU 0 has a total capacity of "
                f"{self.capacity} units of which {self.capacity - self.in_use} is free."
            )
        return Block(self, units)

    def run(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        self.passes.append(len(batch))
        padded = len(batch) * max(len(ids) for ids in batch)
        first_layer = self.allocate(padded)
        second_layer = self.allocate(padded)
        del first_layer, second_layer
        return np.array([[float(sum(ids)), float(len(ids))] for ids in batch], dtype=np.float32)


BATCH = [[1] * 10, [2] * 10, [3] * 10, [4] * 10]
EXPECTED = np.array([[10, 10], [20, 10], [30, 10], [40, 10]], dtype=np.float32)


def test_a_batch_that_fits_runs_once() -> None:
    device = FakeDevice(capacity=80)
    assert np.array_equal(embed_splitting_on_oom(device.run, BATCH, "cuda:0"), EXPECTED)
    assert device.passes == [4] and device.in_use == 0


def test_a_batch_that_does_not_fit_is_split_in_order_with_the_failed_pass_freed() -> None:
    # 4 texts need 2 x 40 units; 2 texts need 2 x 20, which fits only if the failed pass's 40 were given back.
    device = FakeDevice(capacity=50)
    assert np.array_equal(embed_splitting_on_oom(device.run, BATCH, "cuda:0"), EXPECTED)
    assert device.passes == [4, 2, 2] and device.in_use == 0


def test_uneven_batches_split_down_to_single_texts() -> None:
    device = FakeDevice(capacity=25)
    batch = [[1] * 3, [2] * 5, [3] * 9, [4] * 12, [5] * 12]
    vectors = embed_splitting_on_oom(device.run, batch, "cuda:0")
    assert vectors[:, 1].tolist() == [3, 5, 9, 12, 12] and device.in_use == 0
    assert device.passes[0] == 5 and device.passes.count(1) >= 2


def test_only_a_text_that_does_not_fit_alone_fails() -> None:
    device = FakeDevice(capacity=15)
    with pytest.raises(BackendFailure, match="a text of 10 tokens does not fit in the free memory of cuda:0"):
        embed_splitting_on_oom(device.run, BATCH, "cuda:0")
    assert device.in_use == 0


def test_a_text_that_does_not_fit_beside_texts_that_do_fails_alone() -> None:
    from workers.backends import PartialBatchFailure

    device = FakeDevice(capacity=15)
    batch = [[1] * 3, [2] * 20, [3] * 4]  # the 20-token text alone exceeds the device
    with pytest.raises(PartialBatchFailure) as raised:
        embed_splitting_on_oom(device.run, batch, "cuda:0")
    assert set(raised.value.failures) == {1} and "a text of 20 tokens" in str(raised.value.failures[1])
    assert raised.value.vectors[1] is None and all(raised.value.vectors[row] is not None for row in (0, 2))
    assert device.in_use == 0


def test_other_errors_are_not_retried() -> None:
    calls = []

    def broken(batch: Sequence[Sequence[int]]) -> np.ndarray:
        calls.append(len(batch))
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(RuntimeError, match="illegal memory access"):
        embed_splitting_on_oom(broken, BATCH, "cuda:0")
    assert calls == [4]


def test_the_torch_backend_splits_a_batch_its_model_cannot_hold(tmp_path: Path) -> None:
    """The model itself runs out of memory above 12 input tokens (a forward pre-hook raising as the allocator does)."""
    import torch

    from tests.tiny_models import build_tiny_qwen3
    from workers.backends.torch_backend import TorchBackend

    folder = build_tiny_qwen3(tmp_path / "qwen3")
    backend = TorchBackend(folder, "lasttoken", padding_side="left")
    batch = [[5, 6, 7], [8, 9, 10, 11], [12, 13], [14, 15, 16, 17, 18]]
    unconstrained = backend.embed(batch)
    seen = []

    def allocator(_module: object, args: tuple, kwargs: dict) -> None:
        ids = kwargs["input_ids"]
        seen.append(tuple(ids.shape))
        if ids.numel() > 12:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB.")

    backend._model.register_forward_pre_hook(allocator, with_kwargs=True)
    split = backend.embed(batch)
    assert np.allclose(split, unconstrained, atol=1e-5)
    assert seen == [(4, 5), (2, 4), (2, 5)]
