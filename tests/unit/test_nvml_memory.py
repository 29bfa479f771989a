from __future__ import annotations

import json

import pytest

from orchestrator.hardware.nvml_memory import DeviceMemoryProbe, devices_memory_probe
from orchestrator.hardware.probe import probe_topology
from tests.fake_nvml import FIXTURES, install_fake_nvml


def test_slice_memory_by_mig_uuid(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_nvml(monkeypatch, "a100_80gb_mixed")
    gpu = probe_topology().gpus[0]
    small = next(s for s in gpu.slices if s.profile == "1g.10gb")
    probe = DeviceMemoryProbe(small.uuid)
    used, total = probe.probe()
    probe.close()
    assert total == small.memory_mb * 2**20 and used is not None and 0 <= used <= total


def test_unknown_device_and_no_driver_read_as_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_nvml(monkeypatch, "a100_80gb_mixed")
    assert DeviceMemoryProbe("MIG-00000000-0000-0000-0000-000000000000").probe() == (None, None)
    install_fake_nvml(monkeypatch, "library_missing")
    assert DeviceMemoryProbe("MIG-00000000-0000-0000-0000-000000000000").probe() == (None, None)


def test_an_instance_on_several_devices_reports_their_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_nvml(monkeypatch, "a100_80gb_mixed")
    slices = probe_topology().gpus[0].slices[:2]
    used, total = devices_memory_probe([s.uuid for s in slices])()
    assert total == sum(s.memory_mb for s in slices) * 2**20 and used is not None
    assert devices_memory_probe([slices[0].uuid, "GPU-00000000-0000-0000-0000-000000000000"])() == (None, None)


def test_used_memory_leaves_out_the_driver_reservation(monkeypatch: pytest.MonkeyPatch) -> None:
    """C3: NVML v1 ``used`` includes reserved memory (12 MiB here); the gauge reads v2, allocated memory only."""
    install_fake_nvml(monkeypatch, "a100_busy_and_shared")
    probe = DeviceMemoryProbe("MIG-7a1e0c55-0008-4c40-ac1c-6703467bdf08")
    used, total = probe.probe()
    probe.close()
    assert (used, total) == (2100 * 2**20, 4864 * 2**20)


def test_old_drivers_without_memory_v2_still_read(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_nvml(
        monkeypatch,
        {
            **json.loads((FIXTURES / "a100_busy_and_shared.json").read_text()),
            "missing_symbols": ["nvmlDeviceGetMemoryInfo_v2"],
        },
    )
    probe = DeviceMemoryProbe("MIG-7a1e0c55-0008-4c40-ac1c-6703467bdf08")
    assert probe.probe() == ((2100 + 12) * 2**20, 4864 * 2**20)
    probe.close()
