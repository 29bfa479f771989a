"""The fake NVML is as strict as real drivers (gpu-audit B2, W2, W4, W5, W10, W11, C2, C3), and the probe and the
planner hold up against it. Each test names the finding it guards; each failed on the code before the fix."""

from __future__ import annotations

import copy
import ctypes
import json

import pynvml
import pytest

from orchestrator.config import parse_config
from orchestrator.contracts.errors import PlanError
from orchestrator.hardware.nvml_probe import probe_gpus
from orchestrator.hardware.probe import probe_topology
from orchestrator.model_source import ModelFootprint
from orchestrator.planning.planner import plan
from tests.fake_nvml import FIXTURES, install_fake_nvml

MINILM = ModelFootprint(parameters=22_700_000, stored_dtype_bytes=4)


def config(*types: str):
    return parse_config({"mig_instances": [{"name": f"i{n}", "type": t} for n, t in enumerate(types)]})


def fixture_dict(name: str, **changes: object) -> dict:
    raw = copy.deepcopy(json.loads((FIXTURES / f"{name}.json").read_text()))
    raw.update(changes)
    return raw


# --- the fake itself, through pynvml's own wrappers ---------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["a100_mig_disabled", "a100_mig_pending_reset"])
def test_fake_profile_query_is_not_supported_while_mig_is_off_or_pending(monkeypatch, fixture: str) -> None:
    install_fake_nvml(monkeypatch, fixture)
    pynvml.nvmlInit()
    try:
        gpu = pynvml.nvmlDeviceGetHandleByIndex(0)
        with pytest.raises(pynvml.NVMLError_NotSupported):
            pynvml.nvmlDeviceGetGpuInstanceProfileInfo(gpu, pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE)
        count = ctypes.c_uint(0)  # placements answer "regardless of whether MIG is enabled" (nvml.h)
        pynvml.nvmlDeviceGetGpuInstancePossiblePlacements(gpu, 19, None, ctypes.byref(count))
        assert count.value == 7
    finally:
        pynvml.nvmlShutdown()


def test_fake_r470_has_no_v_profile_query_but_the_v1_call(monkeypatch) -> None:
    install_fake_nvml(monkeypatch, "a100_r470")
    pynvml.nvmlInit()
    try:
        gpu = pynvml.nvmlDeviceGetHandleByIndex(0)
        with pytest.raises(pynvml.NVMLError_FunctionNotFound):
            pynvml.nvmlDeviceGetGpuInstanceProfileInfo(gpu, 0)
        assert pynvml.nvmlDeviceGetGpuInstanceProfileInfo(gpu, 0, version=1).id == 19
    finally:
        pynvml.nvmlShutdown()


def test_fake_non_root_is_refused_placements_instances_and_the_parent_process_list(monkeypatch) -> None:
    install_fake_nvml(monkeypatch, fixture_dict("a100_busy_and_shared", root=False))
    pynvml.nvmlInit()
    try:
        gpu = pynvml.nvmlDeviceGetHandleByIndex(0)
        count = ctypes.c_uint(0)
        with pytest.raises(pynvml.NVMLError_NoPermission):
            pynvml.nvmlDeviceGetGpuInstancePossiblePlacements(gpu, 19, None, ctypes.byref(count))
        with pytest.raises(pynvml.NVMLError_NoPermission):
            pynvml.nvmlDeviceGetComputeRunningProcesses(gpu)
        with pytest.raises(pynvml.NVMLError_NoPermission):
            pynvml.nvmlDeviceCreateGpuInstance(gpu, 19)
        mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 3)  # the 1g.5gb+me, process 777 on it
        assert [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(mig)] == [777]
    finally:
        pynvml.nvmlShutdown()


def test_fake_driver_places_gpu_instances_upper_half_first(monkeypatch) -> None:
    install_fake_nvml(monkeypatch, "a100_mig_no_instances")
    pynvml.nvmlInit()
    try:
        gpu = pynvml.nvmlDeviceGetHandleByIndex(0)
        starts = [pynvml.nvmlGpuInstanceGetInfo(pynvml.nvmlDeviceCreateGpuInstance(gpu, 19)).placement.start]
        starts += [pynvml.nvmlGpuInstanceGetInfo(pynvml.nvmlDeviceCreateGpuInstance(gpu, 19)).placement.start]
        assert starts == [4, 5]  # as -cgi 19 x7 lands at 4, 5, 6, 0, 1, 2, 3 on a real A100
        with pytest.raises(pynvml.NVMLError_InsufficientResources):  # 3g needs 4-7 or 0-3: 4 and 5 are taken
            pynvml.nvmlDeviceCreateGpuInstanceWithPlacement(
                gpu, 9, ctypes.byref(pynvml.c_nvmlGpuInstancePlacement_t(4, 4))
            )
        placed = pynvml.nvmlDeviceCreateGpuInstanceWithPlacement(
            gpu, 9, ctypes.byref(pynvml.c_nvmlGpuInstancePlacement_t(0, 4))
        )
        assert pynvml.nvmlGpuInstanceGetInfo(placed).placement.start == 0
        assert pynvml.nvmlDeviceGetMaxMigDeviceCount(gpu) == 7
        with pytest.raises(pynvml.NVMLError_NotFound):  # GPU instances without compute instances: no MIG device
            pynvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0)
        pynvml.nvmlGpuInstanceCreateComputeInstance(placed, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE)
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0))
        assert name == "NVIDIA A100-SXM4-40GB MIG 3g.20gb"
        with pytest.raises(pynvml.NVMLError_InUse):  # a GPU instance with a compute instance cannot be destroyed
            pynvml.nvmlGpuInstanceDestroy(placed)
    finally:
        pynvml.nvmlShutdown()


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("driver_not_loaded", "kernel driver is not loaded"),
        ("driver_version_mismatch", "different versions"),
        ("nvml_unknown_error", "NVML initialisation failed"),
    ],
)
def test_init_failures_other_than_no_driver_stop_a_gpu_config(monkeypatch, fixture: str, message: str) -> None:
    """W4: a broken driver is an error with the fix, not CPU serving; a CPU config still plans."""
    install_fake_nvml(monkeypatch, fixture)
    topology = probe_topology()
    assert topology.gpus == () and topology.gpu_error is not None and message in topology.gpu_error
    with pytest.raises(PlanError, match=rf"'i0' \(1g.5gb\) need a GPU, but NVML failed .*{message}"):
        plan(config("1g.5gb"), topology, MINILM)
    assert plan(config("cpu"), topology, MINILM).device_kind == "cpu"


def test_no_driver_installed_still_serves_on_cpu(monkeypatch) -> None:
    install_fake_nvml(monkeypatch, "library_missing")
    topology = probe_topology()
    assert topology.gpu_error is None
    assert plan(config("1g.5gb"), topology, MINILM).device_kind == "cpu"


# --- the probe and the planner against it -------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["a100_mig_disabled", "a100_mig_pending_reset"])
def test_mig_off_or_pending_plans_enable_not_profile_does_not_exist(monkeypatch, fixture: str) -> None:
    """B2: NVML refuses the table; the built-in one (by PCI id) is assumed, and plan says what to do about MIG."""
    install_fake_nvml(monkeypatch, fixture)
    topology = probe_topology()
    gpu = topology.gpus[0]
    assert gpu.profiles_assumed and gpu.pci_device_id == 0x20B010DE
    assert gpu.profile("1g.5gb") is not None and gpu.profile("3g.20gb").placements == (0, 4)
    with pytest.raises(PlanError) as raised:
        plan(config("1g.5gb"), topology, MINILM)
    assert "does not exist" not in raised.value.message
    assert "MIG is disabled" in raised.value.message or "waiting for a GPU reset" in raised.value.message


def test_mig_off_on_a_board_the_table_does_not_know_says_enable_first(monkeypatch) -> None:
    raw = fixture_dict("a100_mig_disabled")
    raw["gpus"][0]["pci_device_id"] = "0x999910DE"
    raw["gpus"][0]["model"] = "A100-40GB"
    install_fake_nvml(monkeypatch, raw)
    topology = probe_topology()
    assert topology.gpus[0].profiles == ()
    with pytest.raises(PlanError, match=r"MIG is disabled on GPU 0 .*profile table is unknown until MIG is on"):
        plan(config("1g.5gb"), topology, MINILM)


def test_r470_profile_table_from_the_v1_call(monkeypatch) -> None:
    """W5: without the V query the table was dropped and existing 3g.20gb slices were called nonexistent."""
    install_fake_nvml(monkeypatch, "a100_r470")
    report = probe_gpus()
    gpu = report.gpus[0]
    assert report.warnings == ()
    assert {p.name: p.profile_id for p in gpu.profiles}["3g.20gb"] == 9
    assert gpu.profile("1g.5gb+me") is not None and not gpu.profiles_assumed
    placement = plan(config("3g.20gb", "3g.20gb"), probe_topology(), MINILM)
    assert [i.gpu.profile for i in placement.instances] == ["3g.20gb", "3g.20gb"]


def test_profile_table_refused_still_matches_existing_slices(monkeypatch) -> None:
    """W5: NoPermission on the table (a container) falls back to the built-in table, with one warning."""
    raw = fixture_dict("a100_80gb_mixed")
    raw["errors"] = {"nvmlDeviceGetGpuInstanceProfileInfoV": "NoPermission"}
    install_fake_nvml(monkeypatch, raw)
    topology = probe_topology()
    assert topology.gpus[0].profiles_assumed
    assert len(topology.warnings) == 1 and "built-in table for A100-80GB" in topology.warnings[0]
    placement = plan(config("3g.40gb", "1g.10gb"), topology, MINILM)
    assert [i.gpu.profile for i in placement.instances] == ["3g.40gb", "1g.10gb"]


def test_a30_instance_count_is_clamped(monkeypatch) -> None:
    """W11: the A30 reports 4 x 2g.12gb; two fit."""
    install_fake_nvml(monkeypatch, "a30_4x1g6gb")
    gpu = probe_topology().gpus[0]
    assert gpu.profile("2g.12gb").max_instances == 2 and gpu.profile("1g.6gb+me").max_instances == 1


def test_busy_slices_are_skipped_with_a_note(monkeypatch) -> None:
    """W2: a slice with a process on it, or memory in use, is not free."""
    install_fake_nvml(monkeypatch, "a100_busy_and_shared")
    topology = probe_topology()
    by_uuid = {s.uuid: s for s in topology.gpus[0].slices}
    assert by_uuid["MIG-7a1e0c55-0007-4c40-ac1c-6703467bdf07"].process_pids == (777,)
    assert by_uuid["MIG-7a1e0c55-0008-4c40-ac1c-6703467bdf08"].used_memory_mb == 2100  # C3: v2, reserved excluded
    assert by_uuid["MIG-7a1e0c55-0001-4c40-ac1c-6703467bdf01"].used_memory_mb == 0
    with pytest.raises(PlanError) as raised:
        plan(config("1g.5gb"), topology, MINILM)
    assert "MIG-7a1e0c55-0008-4c40-ac1c-6703467bdf08 on GPU 0 skipped: 2100 MiB of its memory in use" in str(
        raised.value.message
    )
    with pytest.raises(PlanError, match=r"1g.5gb\+me MIG-7a1e0c55-0007\S* on GPU 0 skipped: used by process\(es\) 777"):
        plan(config("1g.5gb+me"), topology, MINILM)


def test_compute_instances_share_their_gpu_instance(monkeypatch) -> None:
    """W10: 3 x 1c.3g.20gb each get a third of the memory; the GPU instance without compute instance is listed."""
    install_fake_nvml(monkeypatch, "a100_busy_and_shared")
    gpu = probe_topology().gpus[0]
    shared = [s for s in gpu.slices if s.profile == "1c.3g.20gb"]
    assert [(s.memory_mb, s.sm_count, s.shared_by) for s in shared] == [(19968 // 3, 14, 3)] * 3
    assert gpu.gpu_instances is not None
    empty = [g for g in gpu.gpu_instances if g.compute_instances == 0]
    assert [(g.gpu_instance_id, g.profile, g.start) for g in empty] == [(5, "2g.10gb", 0)]


def test_non_root_probe_is_quiet_about_the_mig_parent_process_list(monkeypatch) -> None:
    """C2: as non-root, the aggregate list of a MIG parent is refused; the MIG devices' own lists are used."""
    install_fake_nvml(monkeypatch, fixture_dict("a100_busy_and_shared", root=False))
    report = probe_gpus()
    gpu = report.gpus[0]
    assert gpu.process_pids == (777,)
    assert gpu.gpu_instances is None  # unknown as non-root, not "none"
    assert not any("process list" in w for w in report.warnings)
    assert [w for w in report.warnings if "placements" in w]  # placements need root: said once


@pytest.mark.parametrize("fixture", sorted(p.stem for p in FIXTURES.glob("*.json") if p.stem != "profiles"))
def test_every_fixture_probes_as_non_root(monkeypatch, fixture: str) -> None:
    raw = fixture_dict(fixture, root=False)
    install_fake_nvml(monkeypatch, raw)
    topology = probe_topology()
    for gpu in topology.gpus:
        assert all(p.placements for p in gpu.profiles)  # the standard geometry fills what NVML refused
