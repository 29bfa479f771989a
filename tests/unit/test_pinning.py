from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.model_source import measure_footprint
from workers.pinning import PinningError, check_visible_device, pin_to_cpu_pool


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
