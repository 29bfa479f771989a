"""`mig plan --apply` against the strict fake NVML: creation at the planned placements (gpu-audit B4), stray GPU
instances destroyed (W10), mode changes decided by architecture and pending modes explained (W9), and a re-probe
that names every difference from the plan."""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import json

import pynvml
import pytest

from orchestrator.config import parse_config
from orchestrator.hardware.probe import probe_topology
from orchestrator.mig_apply import apply_layout
from orchestrator.planning.mig_layout import compare_layout, plan_layout
from tests.fake_nvml import FIXTURES, FakeNvmlLib, install_fake_nvml

B4_LAYOUT = ("3g.20gb", "2g.10gb", "1g.5gb", "1g.5gb")  # the layout docs/mig.md cites: -cgi 14,19,19,9 on old code


def config(*types: str):
    return parse_config({"mig_instances": [{"name": f"i{n}", "type": t} for n, t in enumerate(types)]})


def fixture_dict(name: str) -> dict:
    return copy.deepcopy(json.loads((FIXTURES / f"{name}.json").read_text()))


def resetter(fake: FakeNvmlLib, ran: list[str]):
    """``nvidia-smi -r -i N`` on the fake: applies the pending mode unless something holds the GPU."""

    def run(command: str) -> tuple[int, str]:
        ran.append(command)
        ok = fake.reset_gpu(int(command.split()[-1]))
        return (0, "GPU reset") if ok else (1, "In use by another client")

    return run


def placements(topology) -> list[tuple[str, int, int]]:
    gpu = topology.gpus[0]
    assert gpu.gpu_instances is not None
    return sorted((g.profile, g.start, g.compute_instances) for g in gpu.gpu_instances)


def test_the_driver_default_order_strands_the_b4_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Why placements matter: the -cgi order the old plan printed fails on the driver's upper-half-first order."""
    install_fake_nvml(monkeypatch, "a100_mig_no_instances")
    pynvml.nvmlInit()
    try:
        gpu = pynvml.nvmlDeviceGetHandleByIndex(0)
        for profile_id in (14, 19, 19):
            pynvml.nvmlDeviceCreateGpuInstance(gpu, profile_id)
        with pytest.raises(pynvml.NVMLError_InsufficientResources):
            pynvml.nvmlDeviceCreateGpuInstance(gpu, 9)
    finally:
        pynvml.nvmlShutdown()


def test_apply_enables_resets_replans_and_creates_at_the_planned_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = fixture_dict("a100_mig_disabled")
    raw["gpus"][0]["processes"] = []
    fake = install_fake_nvml(monkeypatch, raw)
    layout = plan_layout(config(*B4_LAYOUT), probe_topology())
    assert layout.gpus[0].gpu.profiles_assumed and layout.gpus[0].enable_mig and layout.gpus[0].reset
    assert any("assumed from the built-in table for A100-40GB" in n for n in layout.gpus[0].notes)
    ran: list[str] = []
    result = apply_layout(config(*B4_LAYOUT), layout, run=resetter(fake, ran), probe=probe_topology)
    assert result.ok, result.differences
    assert ran == ["nvidia-smi -r -i 0"]
    assert "MIG is on: re-read NVML's profile table and re-planned" in result.lines
    after = probe_topology()
    assert not after.gpus[0].profiles_assumed
    assert placements(after) == [("1g.5gb", 2, 1), ("1g.5gb", 3, 1), ("2g.10gb", 0, 1), ("3g.20gb", 4, 1)]
    assert sorted(s.profile for s in after.gpus[0].slices) == sorted(B4_LAYOUT)


def test_apply_destroys_gpu_instances_without_compute_instances(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = fixture_dict("a100_busy_and_shared")
    raw["gpus"][0]["processes"] = []
    fake = install_fake_nvml(monkeypatch, raw)
    before = probe_topology()
    layout = plan_layout(config("3g.20gb", "3g.20gb"), before)
    assert "2g.10gb GPU instance 5 without compute instance" in layout.gpus[0].destroys
    result = apply_layout(config("3g.20gb", "3g.20gb"), layout, run=resetter(fake, []), probe=probe_topology)
    assert result.ok, result.differences
    assert "GPU 0: destroyed GPU instance 5" in result.lines
    assert placements(probe_topology()) == [("3g.20gb", 0, 1), ("3g.20gb", 4, 1)]


def test_apply_stops_on_a_slice_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = install_fake_nvml(monkeypatch, "a100_busy_and_shared")  # process 777 on the 1g.5gb+me
    layout = plan_layout(config("3g.20gb", "3g.20gb"), probe_topology())
    result = apply_layout(config("3g.20gb", "3g.20gb"), layout, run=resetter(fake, []), probe=probe_topology)
    assert result.differences == ("GPU 0 is used by process(es) 777: stop them first; nothing was changed",)
    assert result.lines == () and len(probe_topology().gpus[0].gpu_instances or ()) == 4


def test_hopper_needs_no_reset_but_a_daemon_keeps_the_mode_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = install_fake_nvml(monkeypatch, "h100_mig_disabled")
    layout = plan_layout(config("3g.40gb"), probe_topology())
    assert layout.commands[0] == "nvidia-smi -i 0 -mig 1" and "nvidia-smi -r -i 0" not in layout.commands
    ran: list[str] = []
    assert apply_layout(config("3g.40gb"), layout, run=resetter(fake, ran), probe=probe_topology).ok
    assert ran == []

    raw = fixture_dict("h100_mig_disabled")
    raw["gpus"][0]["mode_change_blocked"] = True  # DCGM or nvsm holds the GPU
    fake = install_fake_nvml(monkeypatch, raw)
    result = apply_layout(config("3g.40gb"), plan_layout(config("3g.40gb"), probe_topology()), resetter(fake, ran))
    assert not result.ok
    assert "still pending: stop what holds the GPU (sudo systemctl stop nvidia-dcgm nvsm" in result.differences[0]


def test_reset_is_decided_by_architecture_not_name(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = fixture_dict("a100_mig_disabled")
    raw["gpus"][0]["name"] = "NVIDIA A800-SXM4-40GB"  # GA100 under another name: the old name check missed it
    raw["gpus"][0]["pci_device_id"] = "0x20F610DE"
    install_fake_nvml(monkeypatch, raw)
    assert plan_layout(config("1g.5gb"), probe_topology()).commands[:2] == [
        "nvidia-smi -i 0 -mig 1",
        "nvidia-smi -r -i 0",
    ]


def test_compare_names_each_difference(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_nvml(monkeypatch, "a100_mig_no_instances")
    layout = plan_layout(config("1g.5gb", "3g.20gb"), probe_topology())
    pynvml.nvmlInit()
    try:  # the driver's default order puts the 3g at 4; a 1g at 1 was left without compute instance
        gpu = pynvml.nvmlDeviceGetHandleByIndex(0)
        three = pynvml.nvmlDeviceCreateGpuInstance(gpu, 9)
        pynvml.nvmlGpuInstanceCreateComputeInstance(three, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE)
        pynvml.nvmlDeviceCreateGpuInstanceWithPlacement(
            gpu, 19, ctypes.byref(pynvml.c_nvmlGpuInstancePlacement_t(1, 1))
        )
    finally:
        pynvml.nvmlShutdown()
    planned = dataclasses.replace(layout.gpus[0])
    assert sorted((p.name, s) for p, s in planned.placements) == [("1g.5gb", 4), ("3g.20gb", 0)]
    differences = compare_layout(layout, probe_topology())
    assert sorted(d.split(": ", 1)[1] for d in differences) == [
        "GPU instance 2 (1g.5gb) has no compute instance",
        "planned 1g.5gb at memory slice 4, not there",
        "planned 3g.20gb at memory slice 0, not there",
        "unplanned 1g.5gb at memory slice 1",
        "unplanned 3g.20gb at memory slice 4",
    ]
