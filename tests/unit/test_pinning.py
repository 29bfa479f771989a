from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.model_source import measure_footprint
from workers.pinning import (
    PinningError,
    check_visible_device,
    check_visible_devices,
    pin_to_cpu_pool,
    pin_to_gpu_devices,
)


def test_exactly_the_planned_device_passes() -> None:
    check_visible_device("MIG-1b8509c0-e60d-502d-8263-d434867998aa", ["1B8509C0-E60D-502D-8263-D434867998AA"])
    check_visible_device("GPU-1e44b340-5807-0dbe-62e6-343a6b8b8bcd", ["GPU-1e44b340-5807-0dbe-62e6-343a6b8b8bcd"])


def test_wrong_device_or_count_fails_with_a_clear_message() -> None:
    with pytest.raises(PinningError, match="landed on device 41b9eab5.*pins this instance to MIG-1b8509c0"):
        check_visible_device("MIG-1b8509c0-e60d-502d-8263-d434867998aa", ["41b9eab5-8d48-5c52-9f07-82bc59af3901"])
    with pytest.raises(PinningError, match="exactly one CUDA device .* saw 2"):
        check_visible_device("MIG-a", ["a", "b"])
    with pytest.raises(PinningError, match="saw 0: none"):
        check_visible_device("MIG-a", [])


A, B = "GPU-1e44b340-5807-0dbe-62e6-343a6b8b8bcd", "GPU-4579f2e7-8948-4ba8-8960-aef04e672684"


def fake_cuda(monkeypatch: pytest.MonkeyPatch, uuids: list[str]) -> None:
    """torch.cuda as a replica would see it with these devices visible (torch reports bare UUIDs)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(uuids))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid=uuids[i][4:]))
    # pin_to_gpu_devices sets both variables: give monkeypatch their values to restore.
    for name in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"):
        monkeypatch.setenv(name, os.environ.get(name, ""))


def test_several_whole_gpus_are_pinned_together_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, [A, B])
    pin_to_gpu_devices([A, B])
    assert os.environ["CUDA_VISIBLE_DEVICES"] == f"{A},{B}" and os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    fake_cuda(monkeypatch, [A])
    with pytest.raises(PinningError, match=rf"exactly 2 CUDA devices \({A}, {B}\), saw 1: {A[4:]} \(was CUDA"):
        pin_to_gpu_devices([A, B])
    assert os.environ["CUDA_VISIBLE_DEVICES"] == f"{A},{B}"


def test_several_devices_must_match_in_number_and_order() -> None:
    check_visible_devices([A, B], [A[4:].upper(), B])
    with pytest.raises(PinningError, match=rf"landed on device {B[4:]} as CUDA device 0, but the plan pins .* to {A}"):
        check_visible_devices([A, B], [B[4:], A[4:]])
    with pytest.raises(PinningError, match="exactly 2 CUDA devices .* saw 3"):
        check_visible_devices([A, B], [A, B, A])


def test_cpu_pinning_sets_affinity_and_threads() -> None:
    import torch

    before_affinity, before_threads = os.sched_getaffinity(0), torch.get_num_threads()
    try:
        granted = pin_to_cpu_pool((0,), 1)
        assert granted == (0,) and os.sched_getaffinity(0) == {0} and torch.get_num_threads() == 1
    finally:
        os.sched_setaffinity(0, before_affinity)
        torch.set_num_threads(before_threads)


def test_footprint_of_minilm(minilm_folder: Path) -> None:
    footprint = measure_footprint(minilm_folder)
    assert footprint.stored_dtype_bytes == 4
    assert 22_000_000 < footprint.parameters < 23_500_000  # all-MiniLM-L6-v2 has 22.7 M parameters
