from __future__ import annotations

import pytest

from orchestrator.hardware.nvml_memory import DeviceMemoryProbe, devices_memory_probe
from orchestrator.hardware.probe import probe_topology
from tests.fake_nvml import install_fake_nvml


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
