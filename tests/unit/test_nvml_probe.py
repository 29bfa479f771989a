"""The NVML probe, run through the real pynvml wrappers over the fake NVML library (tests/fake_nvml.py).

Each fixture under tests/fixtures/nvml is a machine; the assertions use the values of the real profile tables
(shared/reference/mig-nvml.md section 2), so a probe that misreads a struct field or an index shows up here.
"""

from __future__ import annotations

import copy
import ctypes
import json
import sys

import pynvml
import pytest

from orchestrator.hardware.nvml_probe import NvmlReport, NvmlUnavailable, probe_gpus
from orchestrator.hardware.probe import probe_topology
from orchestrator.hardware.topology import GpuInfo, MigProfile
from tests.fake_nvml import FIXTURES, FixtureError, install_fake_nvml, load_machine

MACHINES = sorted(p.stem for p in FIXTURES.glob("*.json") if p.stem != "profiles")


def probe(monkeypatch: pytest.MonkeyPatch, fixture: str | dict) -> NvmlReport:
    """Probe a fixture machine and check that every nvmlInit was balanced by nvmlShutdown."""
    fake = install_fake_nvml(monkeypatch, fixture)
    report = probe_gpus()
    assert fake.initialized == 0
    assert fake.calls[0] == "nvmlInitWithFlags" and fake.calls[-1] == "nvmlShutdown"
    return report


def only_gpu(report: NvmlReport) -> GpuInfo:
    assert len(report.gpus) == 1, report
    return report.gpus[0]


def profile(gpu: GpuInfo, name: str) -> MigProfile:
    found = gpu.profile(name)
    assert found is not None, f"{gpu.name} has no {name}"
    return found


def fixture_dict(name: str) -> dict:
    return copy.deepcopy(json.loads((FIXTURES / f"{name}.json").read_text()))


@pytest.mark.parametrize("name", MACHINES)
def test_every_fixture_is_a_physically_valid_machine(name: str) -> None:
    load_machine(name)  # raises FixtureError on overlapping placements, unknown profiles, over-capacity...


@pytest.mark.parametrize(
    ("profile", "start"),
    [("3g.20gb", 2), ("1g.20gb", 0), ("1g.5gb", 4)],  # bad placement / not an A100-40GB profile / overlaps 3g at 4
)
def test_the_fake_refuses_impossible_layouts(profile: str, start: int) -> None:
    raw = fixture_dict("gpu_lost")
    raw["gpus"][0]["mig_devices"].append(
        {"profile": profile, "start": start, "gpu_instance_id": 9, "compute_instance_id": 0, "uuid": "MIG-x"}
    )
    with pytest.raises(FixtureError):
        load_machine(raw)


def test_a100_40gb_split_in_seven(monkeypatch: pytest.MonkeyPatch) -> None:
    report = probe(monkeypatch, "a100_40gb_7x1g5gb")
    gpu = only_gpu(report)
    assert (gpu.name, gpu.uuid, gpu.memory_mb) == (
        "NVIDIA A100-SXM4-40GB",
        "GPU-2253a84b-317f-433d-a301-16baa54c737e",
        40960,
    )
    assert (gpu.mig_supported, gpu.mig_enabled, gpu.mig_pending_enabled, gpu.mig_reset_pending) == (
        True,
        True,
        True,
        False,
    )
    assert [s.profile for s in gpu.slices] == ["1g.5gb"] * 7
    assert [s.gpu_instance_id for s in gpu.slices] == [7, 8, 9, 10, 11, 12, 13]
    assert {(s.compute_instance_id, s.memory_mb, s.sm_count, s.parent_index) for s in gpu.slices} == {(0, 4864, 14, 0)}
    assert {s.parent_uuid for s in gpu.slices} == {gpu.uuid}
    assert gpu.slices[0].uuid == "MIG-082b151d-86c0-4c40-ac1c-6703467bdfbf"
    assert gpu.memory_slice_count == 8
    assert gpu.process_pids == (31337,)
    assert (report.driver_version, report.cuda_driver_version, report.warnings) == ("550.54.15", 12040, ())


def test_a100_40gb_profile_table(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = only_gpu(probe(monkeypatch, "a100_40gb_7x1g5gb"))
    by_name = {p.name: (p.profile_id, p.compute_slices, p.memory_mb, p.sm_count, p.max_instances) for p in gpu.profiles}
    assert by_name == {
        "1g.5gb": (19, 1, 4864, 14, 7),
        "1g.5gb+me": (20, 1, 4864, 14, 1),
        "1g.10gb": (15, 1, 9856, 14, 4),
        "2g.10gb": (14, 2, 9856, 28, 3),
        "3g.20gb": (9, 3, 19968, 42, 2),
        "4g.20gb": (5, 4, 19968, 56, 1),
        "7g.40gb": (0, 7, 40192, 98, 1),
    }
    placements = {p.name: (p.placements, p.placement_size) for p in gpu.profiles}
    assert placements["1g.5gb"] == ((0, 1, 2, 3, 4, 5, 6), 1)
    assert placements["1g.10gb"] == ((0, 2, 4, 6), 2)
    assert placements["2g.10gb"] == ((0, 2, 4), 2)
    assert placements["3g.20gb"] == ((0, 4), 4)
    assert placements["7g.40gb"] == ((0,), 8)


def test_a_profile_name_resolves_per_gpu_model(monkeypatch: pytest.MonkeyPatch) -> None:
    a100_40 = only_gpu(probe(monkeypatch, "a100_40gb_7x1g5gb"))
    a100_80 = only_gpu(probe(monkeypatch, "a100_80gb_mixed"))
    h100 = only_gpu(probe(monkeypatch, "h100_80gb_mixed"))
    one_g_10 = [gpu.profile("1g.10gb") for gpu in (a100_40, a100_80, h100)]
    assert [(p.profile_id, p.max_instances, p.placement_size) for p in one_g_10 if p] == [
        (15, 4, 2),
        (19, 7, 1),
        (19, 7, 1),
    ]
    assert profile(h100, "1g.10gb").sm_count == 16 and profile(a100_80, "1g.10gb").sm_count == 14
    assert a100_40.profile("1g.20gb") is None and profile(a100_80, "1g.20gb").profile_id == 15


def test_a100_80gb_mixed_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = only_gpu(probe(monkeypatch, "a100_80gb_mixed"))
    got = [(s.profile, s.gpu_instance_id, s.memory_mb, s.sm_count) for s in gpu.slices]
    assert got == [
        ("3g.40gb", 2, 40192, 42),
        ("2g.20gb", 3, 19968, 28),
        ("1g.10gb", 9, 9984, 14),
        ("1g.10gb", 10, 9984, 14),
    ]
    assert profile(gpu, "7g.80gb").memory_mb == 81152
    assert gpu.memory_mb == 81920 and gpu.memory_slice_count == 8


def test_h100_80gb_mixed_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = only_gpu(probe(monkeypatch, "h100_80gb_mixed"))
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    got = [(s.profile, s.gpu_instance_id, s.memory_mb, s.sm_count) for s in gpu.slices]
    assert got == [
        ("3g.40gb", 2, 40448, 60),
        ("1g.20gb", 3, 20096, 26),
        ("1g.10gb", 9, 9984, 16),
        ("1g.10gb", 10, 9984, 16),
    ]
    assert profile(gpu, "7g.80gb").sm_count == 132


def test_h200_mig_device_slots_may_have_holes(monkeypatch: pytest.MonkeyPatch) -> None:
    report = probe(monkeypatch, "h200_mixed")
    gpu = only_gpu(report)
    assert [(s.profile, s.gpu_instance_id, s.sm_count) for s in gpu.slices] == [
        ("2g.35gb", 3, 32),
        ("2g.35gb", 4, 32),
        ("1g.18gb", 11, 16),
        ("1g.18gb", 12, 16),
        ("1g.18gb", 13, 16),
    ]
    assert report.warnings == ()  # the empty slot 3 (NotFound) is not a problem
    assert profile(gpu, "7g.141gb").memory_mb == 143104
    assert profile(gpu, "1g.35gb").profile_id == 15


def test_a30_has_four_memory_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = only_gpu(probe(monkeypatch, "a30_4x1g6gb"))
    assert gpu.memory_slice_count == 4
    assert [(s.profile, s.gpu_instance_id, s.memory_mb, s.sm_count) for s in gpu.slices] == [
        ("1g.6gb", 3, 5952, 14),
        ("1g.6gb", 4, 5952, 14),
        ("1g.6gb", 5, 5952, 14),
        ("1g.6gb", 6, 5952, 14),
    ]
    by_name = {p.name: (p.profile_id, p.max_instances, p.placements) for p in gpu.profiles}
    assert by_name["1g.6gb"] == (14, 4, (0, 1, 2, 3))
    assert by_name["2g.12gb"] == (5, 2, (0, 2))
    assert by_name["4g.24gb"] == (0, 1, (0,))
    assert set(by_name) == {"1g.6gb", "1g.6gb+me", "2g.12gb", "2g.12gb+me", "4g.24gb"}


def test_mig_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = only_gpu(probe(monkeypatch, "a100_mig_disabled"))
    assert (gpu.mig_supported, gpu.mig_enabled, gpu.mig_pending_enabled, gpu.mig_reset_pending) == (
        True,
        False,
        False,
        False,
    )
    # nvml.h: the profile table and placements are answered whether MIG is enabled or not, so a plan can enable it.
    assert gpu.slices == () and len(gpu.profiles) == 7 and gpu.memory_slice_count == 8
    assert (profile(gpu, "1g.10gb").profile_id, profile(gpu, "3g.20gb").placements) == (15, (0, 4))
    assert gpu.process_pids == (4242, 4243)


def test_mig_enabled_but_waiting_for_a_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    report = probe(monkeypatch, "a100_mig_pending_reset")
    gpu = only_gpu(report)
    assert (gpu.mig_enabled, gpu.mig_pending_enabled, gpu.mig_reset_pending) == (False, True, True)
    assert gpu.slices == () and report.warnings == ()
    assert profile(gpu, "7g.40gb").placement_size == 8


def test_mig_on_without_instances(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = only_gpu(probe(monkeypatch, "a100_mig_no_instances"))
    assert gpu.mig_enabled and not gpu.mig_reset_pending
    assert gpu.slices == ()
    assert len(gpu.profiles) == 7 and gpu.memory_slice_count == 8


def test_a_mig_gpu_next_to_a_gpu_without_mig(monkeypatch: pytest.MonkeyPatch) -> None:
    report = probe(monkeypatch, "two_gpus_mig_and_whole")
    a100, l4 = report.gpus
    assert [s.profile for s in a100.slices] == ["3g.40gb", "3g.40gb"]
    assert [s.gpu_instance_id for s in a100.slices] == [1, 2]
    assert {s.parent_uuid for s in a100.slices} == {"GPU-36fb8472-8335-4952-9420-a348a08b2332"}
    assert (l4.index, l4.name, l4.uuid, l4.memory_mb) == (
        1,
        "NVIDIA L4",
        "GPU-4579f2e7-8948-4ba8-8960-aef04e672684",
        23034,
    )
    assert (l4.mig_supported, l4.mig_enabled, l4.mig_reset_pending, l4.slices, l4.profiles) == (
        False,
        False,
        False,
        (),
        (),
    )
    assert l4.memory_slice_count == 0 and l4.process_pids == (5150,)
    assert report.warnings == ()


def test_a_lost_gpu_is_skipped_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    report = probe(monkeypatch, "gpu_lost")
    gpu = only_gpu(report)
    assert gpu.uuid == "GPU-122b8246-7d33-45c7-9ade-2ef3fb90f60d" and len(gpu.slices) == 2
    assert report.warnings == ("GPU 1 skipped: nvmlDeviceGetHandleByIndex: GPU is lost",)


def test_a_gpu_lost_in_the_middle_of_the_probe_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = fixture_dict("two_gpus_mig_and_whole")
    raw["gpus"][0]["errors"] = {"nvmlDeviceGetMigDeviceHandleByIndex": "GpuIsLost"}
    report = probe(monkeypatch, raw)
    assert [gpu.name for gpu in report.gpus] == ["NVIDIA L4"]
    assert len(report.warnings) == 1 and report.warnings[0].startswith("GPU 0 skipped:")
    assert "GPU is lost" in report.warnings[0]


def test_an_old_driver_degrades_without_failing(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = fixture_dict("a100_40gb_7x1g5gb")
    raw["missing_symbols"] = [
        "nvmlDeviceGetComputeRunningProcesses_v3",  # pynvml raises NVMLLibraryMismatchError, not an NVMLError
        "nvmlSystemGetCudaDriverVersion_v2",
        "nvmlDeviceGetAttributes_v2",
    ]
    report = probe(monkeypatch, raw)
    gpu = only_gpu(report)
    assert gpu.process_pids == ()
    assert [s.sm_count for s in gpu.slices] == [14] * 7  # from the profile table
    assert report.cuda_driver_version == 12040  # from the original call
    assert len(report.warnings) == 1
    assert "process list" in report.warnings[0] and "nvmlDeviceGetComputeRunningProcesses" in report.warnings[0]


def test_placements_refused_to_a_non_root_user(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = fixture_dict("a100_mig_no_instances")
    raw["gpus"][0]["errors"] = {"nvmlDeviceGetGpuInstancePossiblePlacements_v2": "NoPermission"}
    report = probe(monkeypatch, raw)
    gpu = only_gpu(report)
    assert profile(gpu, "1g.5gb").profile_id == 19
    assert {(p.placements, p.placement_size) for p in gpu.profiles} == {((), 0)}
    assert gpu.memory_slice_count == 0
    assert report.warnings == (
        "GPU 0 (GPU-f8b74c0c-4124-42d9-8e4b-225aa0acbba9) MIG placements unavailable: "
        "nvmlDeviceGetGpuInstancePossiblePlacements: Insufficient Permissions",
    )


def test_process_list_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = fixture_dict("a100_mig_disabled")
    raw["gpus"][0]["errors"] = {"nvmlDeviceGetComputeRunningProcesses_v3": "NoPermission"}
    report = probe(monkeypatch, raw)
    assert only_gpu(report).process_pids == ()
    assert report.warnings == (
        "GPU 0 (GPU-c5922dbd-635b-40d3-8632-ac1d77d2e4c4) process list: "
        "nvmlDeviceGetComputeRunningProcesses: Insufficient Permissions",
    )


def test_nvml_failing_after_init_still_shuts_down(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = fixture_dict("a100_mig_disabled")
    raw["errors"] = {"nvmlDeviceGetCount_v2": "Unknown"}
    fake = install_fake_nvml(monkeypatch, raw)
    with pytest.raises(NvmlUnavailable, match=r"^NVML cannot count the GPUs \(Unknown Error\)$"):
        probe_gpus()
    assert fake.initialized == 0 and fake.calls[-1] == "nvmlShutdown"


def test_library_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = install_fake_nvml(monkeypatch, "library_missing")
    with pytest.raises(NvmlUnavailable) as raised:
        probe_gpus()
    assert str(raised.value) == "no NVIDIA driver (NVML Shared Library Not Found)"
    assert fake.loads == 0 and pynvml.nvmlLib is None
    topology = probe_topology()
    assert topology.gpu_note == "No GPU found: no NVIDIA driver (NVML Shared Library Not Found); serving on CPU pools."
    assert (topology.gpus, topology.driver_version, topology.cuda_driver_version) == ((), None, None)
    assert topology.cpu.cores


def test_driver_not_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_nvml(monkeypatch, "driver_not_loaded")
    with pytest.raises(NvmlUnavailable, match=r"^the NVIDIA kernel driver is not loaded \(Driver Not Loaded\): load"):
        probe_gpus()
    note = probe_topology().gpu_note
    assert note is not None and note.startswith("No GPU found: ") and note.endswith("; serving on CPU pools.")


def test_pynvml_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with pytest.raises(NvmlUnavailable, match=r"^the nvidia-ml-py package is not installed$"):
        probe_gpus()


def test_topology_with_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_nvml(monkeypatch, "gpu_lost")
    topology = probe_topology()
    assert topology.gpu_note is None
    assert [gpu.uuid for gpu in topology.gpus] == ["GPU-122b8246-7d33-45c7-9ade-2ef3fb90f60d"]
    assert (topology.driver_version, topology.cuda_driver_version) == ("550.54.15", 12040)
    assert topology.warnings == ("GPU 1 skipped: nvmlDeviceGetHandleByIndex: GPU is lost",)


def test_topology_with_zero_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_nvml(monkeypatch, "no_devices")
    topology = probe_topology()
    assert topology.gpu_note == "No GPU found: NVML reports 0 devices; serving on CPU pools."
    assert topology.driver_version == "550.54.15"


def test_topology_when_every_gpu_is_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = fixture_dict("gpu_lost")
    raw["gpus"] = raw["gpus"][1:]
    install_fake_nvml(monkeypatch, raw)
    note = probe_topology().gpu_note
    assert note == (
        "No GPU found: no GPU could be read (GPU 0 skipped: nvmlDeviceGetHandleByIndex: GPU is lost); "
        "serving on CPU pools."
    )


def test_the_fake_speaks_through_pynvml_own_wrappers_and_exceptions(monkeypatch: pytest.MonkeyPatch) -> None:
    library, cache = pynvml.nvmlLib, pynvml._nvmlGetFunctionPointer_cache
    with monkeypatch.context() as patch:
        install_fake_nvml(patch, "h200_mixed")
        pynvml.nvmlInit()
        try:
            parent = pynvml.nvmlDeviceGetHandleByIndex(0)
            assert pynvml.nvmlDeviceGetMigMode(parent) == [1, 1]
            assert pynvml.nvmlDeviceGetMaxMigDeviceCount(parent) == 7
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 2)
            assert pynvml.nvmlDeviceGetName(mig) == "NVIDIA H200 MIG 1g.18gb"
            assert pynvml.nvmlDeviceGetUUID(mig) == "MIG-4b88af08-3acf-4123-9af3-4d1611baa3e7"
            assert pynvml.nvmlDeviceGetGpuInstanceId(mig) == 11
            assert pynvml.nvmlDeviceGetMemoryInfo(mig).total == 16384 * 1024 * 1024
            info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(parent, pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2)
            assert (info.id, info.name) == (15, "MIG 1g.35gb")  # pynvml decodes char[] fields to str
            count = ctypes.c_uint(0)
            pynvml.nvmlDeviceGetGpuInstancePossiblePlacements(parent, 9, None, ctypes.byref(count))
            assert count.value == 2
            with pytest.raises(pynvml.NVMLError_NotFound):
                pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 3)
            with pytest.raises(pynvml.NVMLError_InvalidArgument):
                pynvml.nvmlDeviceGetGpuInstanceId(parent)
            with pytest.raises(pynvml.NVMLError_NotSupported):
                pynvml.nvmlDeviceGetGpuInstanceProfileInfo(parent, pynvml.NVML_GPU_INSTANCE_PROFILE_8_SLICE)
            with pytest.raises(pynvml.NVMLError_FunctionNotFound):  # not implemented: as an old driver
                pynvml.nvmlDeviceGetUtilizationRates(parent)
        finally:
            pynvml.nvmlShutdown()
    assert pynvml.nvmlLib is library and pynvml._nvmlGetFunctionPointer_cache is cache  # state restored


def _nvml_library_present() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_nvml_library_present(), reason="this machine has an NVIDIA driver")
def test_real_pynvml_on_a_machine_without_driver() -> None:
    """No fake: the installed pynvml against this machine, which has no libnvidia-ml."""
    with pytest.raises(NvmlUnavailable, match=r"^no NVIDIA driver \(NVML Shared Library Not Found\)$"):
        probe_gpus()
    note = probe_topology().gpu_note
    assert note == "No GPU found: no NVIDIA driver (NVML Shared Library Not Found); serving on CPU pools."
