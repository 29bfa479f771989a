from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.contracts.plan import GpuBinding
from orchestrator.model_source import measure_footprint
from tests.fake_cuda_driver import FakeDriver
from workers import cuda_driver
from workers.pinning import (
    PinningError,
    check_visible_device,
    check_visible_devices,
    pin_to_binding,
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


def fake_cuda(
    monkeypatch: pytest.MonkeyPatch, uuids: list[str], memory_mb: int = 81_559, driver: FakeDriver | None = None
) -> None:
    """torch.cuda as a replica would see it with these devices visible (torch reports bare UUIDs), CUDA not yet
    initialised, and ``driver`` as the CUDA driver library (None: the machine has none)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(uuids))
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda i: SimpleNamespace(uuid=uuids[i].split("-", 1)[1], total_memory=memory_mb * 2**20),
    )
    monkeypatch.setattr(cuda_driver, "open_driver", lambda: driver)
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


# gpu-audit W1: which UUID CUDA reports for a MIG slice is not documented. An A100's MIG slice and its parent:
SLICE, PARENT = "MIG-1b8509c0-e60d-502d-8263-d434867998aa", "GPU-1e44b340-5807-0dbe-62e6-343a6b8b8bcd"
SIBLING = "MIG-41b9eab5-8d48-5c52-9f07-82bc59af3901"  # another 1g.5gb slice of the same GPU
SLICE_MB, WHOLE_GPU_MB = 4864, 40_960


def binding(uuid: str = SLICE, memory_mb: int = SLICE_MB) -> GpuBinding:
    return GpuBinding("mig", uuid, 0, PARENT, "NVIDIA A100-SXM4-40GB", "1g.5gb", memory_mb, 14, 1, 0)


def test_a_slice_is_recognised_by_the_driver_uuid_when_torch_reports_the_parent_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_cuda(monkeypatch, [PARENT], SLICE_MB, FakeDriver([SLICE]))
    assert pin_to_binding(binding()) == "driver UUID (cuDeviceGetUuid_v2)"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == SLICE


def test_a_slice_torch_names_itself_needs_no_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, [SLICE], SLICE_MB, None)
    assert pin_to_binding(binding()) == "runtime UUID"


def test_landing_on_a_sibling_slice_fails_even_though_the_parent_and_memory_match(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_cuda(monkeypatch, [PARENT], SLICE_MB, FakeDriver([SIBLING]))
    with pytest.raises(PinningError, match=rf"landed on device {PARENT[4:]} \(driver UUID {SIBLING[4:]}\)"):
        pin_to_binding(binding())


def test_without_the_driver_api_the_single_visible_device_is_matched_by_its_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_cuda(monkeypatch, [PARENT], SLICE_MB - 64, FakeDriver([SLICE], has_v2=False))  # CUDA < 11.4
    assert pin_to_binding(binding()) == f"parent GPU UUID and slice memory ({SLICE_MB - 64} MiB)"
    # The whole parent GPU (MIG not honoured) shows its full memory: refused.
    fake_cuda(monkeypatch, [PARENT], WHOLE_GPU_MB, None)
    with pytest.raises(
        PinningError, match=f"landed on device {PARENT[4:]}, but the plan pins this instance to {SLICE}"
    ):
        pin_to_binding(binding())
    # A whole-GPU binding never falls back to memory: its own UUID must be seen.
    fake_cuda(monkeypatch, [SIBLING], SLICE_MB, None)
    with pytest.raises(PinningError, match="landed on device"):
        pin_to_gpu_devices([PARENT], None, SLICE_MB)


def test_cuda_started_before_the_pin_fails_fast_and_pins_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    fake_cuda(monkeypatch, [SLICE], SLICE_MB, FakeDriver([SLICE]))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(PinningError, match=r"initialised in this process \(torch\) before it was pinned to MIG-1b85"):
        pin_to_binding(binding())
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"

    # torch.cuda.is_available() runs cuInit without torch counting CUDA as initialised: the driver says so.
    driver = FakeDriver([SLICE])
    driver.cuInit(0)
    fake_cuda(monkeypatch, [SLICE], SLICE_MB, driver)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with pytest.raises(PinningError, match=r"\(a CUDA driver call \(cuInit\)\).*would use every GPU of the machine"):
        pin_to_binding(binding())

    # Started with the very devices this pin wants (a child launched already pinned): nothing to refuse.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", SLICE)
    assert pin_to_binding(binding()) == "runtime UUID"


def test_driver_calls_write_through_their_pointers() -> None:
    driver = FakeDriver([SLICE, PARENT])
    assert cuda_driver.driver_initialised(driver) is False
    assert cuda_driver.device_uuids_v2(driver) == [SLICE[4:], PARENT[4:]]
    assert cuda_driver.driver_initialised(driver) is True
    assert cuda_driver.device_uuids_v2(FakeDriver([SLICE], has_v2=False)) is None
    with pytest.raises(cuda_driver.CudaDriverError, match="cuInit returned CUDA error 100"):
        cuda_driver.device_uuids_v2(FakeDriver([], init_error=100))  # CUDA_ERROR_NO_DEVICE
