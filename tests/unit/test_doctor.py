from __future__ import annotations

import dataclasses

from orchestrator.doctor import run_checks
from orchestrator.hardware.topology import CpuTopology, GpuInfo, Topology
from tests.unit.test_mig_planner import SEVEN_1G, a100, topo


def by_name(checks):
    return {check.name: check for check in checks}


def test_no_driver_is_a_warning_with_the_fix() -> None:
    checks = by_name(run_checks(Topology(cpu=CpuTopology((0,)), gpu_note="No GPU found: no NVIDIA driver"), {}))
    assert checks["NVIDIA driver"].status == "warn" and "install the NVIDIA driver" in checks["NVIDIA driver"].fix


def test_healthy_mig_gpu_passes() -> None:
    topology = dataclasses.replace(topo(a100(layout=SEVEN_1G)), driver_version="550.54.15")
    checks = run_checks(topology, {})
    assert all(check.status == "pass" for check in checks), checks


def test_old_driver_pending_reset_busy_gpu_and_container_problems() -> None:
    gpu = dataclasses.replace(a100(mig_enabled=False, mig_pending_enabled=True), process_pids=(77,))
    l4 = GpuInfo(1, "NVIDIA L4", "GPU-l4", 23034)
    topology = dataclasses.replace(topo(gpu, l4), driver_version="450.51.06")
    checks = by_name(run_checks(topology, {"NVIDIA_DRIVER_CAPABILITIES": "utility", "NVIDIA_VISIBLE_DEVICES": "all"}))
    assert checks["driver version"].status == "fail"
    mode = checks["GPU 0 (NVIDIA A100-SXM4-40GB) MIG mode"]
    assert mode.status == "fail" and mode.fix == "reset the GPU: sudo nvidia-smi -r -i 0 (or reboot)"
    assert checks["GPU 0 (NVIDIA A100-SXM4-40GB) processes"].status == "warn"
    assert checks["GPU 1 (NVIDIA L4) MIG support"].status == "warn"
    assert checks["container capabilities"].status == "fail" and "compute" in checks["container capabilities"].detail


def test_container_without_mig_capability_and_devices() -> None:
    checks = by_name(run_checks(topo(a100(layout=SEVEN_1G)), {"NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}))
    assert checks["container capabilities"].status == "pass"
    assert checks["container MIG capability"].status == "warn"
    assert checks["container devices"].status == "warn"


def test_mig_on_without_instances() -> None:
    checks = by_name(run_checks(topo(a100()), {}))
    assert "no GPU instance exists" in checks["GPU 0 (NVIDIA A100-SXM4-40GB) MIG mode"].detail
