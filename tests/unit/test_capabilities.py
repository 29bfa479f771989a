"""Optional packages are looked up in one place (``orchestrator.capabilities``); the planner only receives them.

Environments are faked by answering ``importlib.util.find_spec`` for the five optional packages only (nothing else
is imported while the fake is in place); the real environment is compared with importlib itself.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import itertools

import pytest
from typer.testing import CliRunner

from orchestrator import capabilities
from orchestrator.capabilities import (
    ALL_PACKAGES,
    NODE_PACKAGES,
    Capabilities,
    detect,
    installed,
)
from orchestrator.cli import app
from orchestrator.config import parse_config
from orchestrator.contracts.errors import PlanError
from orchestrator.hardware.cluster_probe import NodeTopology, installed_optional_packages
from orchestrator.hardware.topology import CpuTopology, GpuInfo, Topology
from orchestrator.model_source import ModelFootprint
from orchestrator.planning.cluster_planner import plan_cluster
from orchestrator.planning.planner import plan
from tests.conftest import REPO

BERT = ModelFootprint(parameters=22_700_000, stored_dtype_bytes=4, model_type="bert")
QWEN3 = ModelFootprint(parameters=600_000_000, stored_dtype_bytes=2, model_type="qwen3")
CPU = Topology(cpu=CpuTopology(cores=(0, 1)))
L4S = Topology(
    cpu=CpuTopology(cores=(0, 1)),
    gpus=tuple(GpuInfo(i, "NVIDIA L4", f"GPU-l4{i:06d}-0000-0000-0000-000000000000", 23034) for i in range(2)),
)


def fake_environment(monkeypatch: pytest.MonkeyPatch, present: set[str]) -> None:
    """``find_spec`` finds exactly ``present`` among the optional packages (a spec without importing anything)."""
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> importlib.machinery.ModuleSpec | None:
        if name not in ALL_PACKAGES:
            return real(name, package)
        return importlib.machinery.ModuleSpec(name, None) if name in present else None

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def every_environment() -> list[set[str]]:
    return [set(chosen) for n in range(len(ALL_PACKAGES) + 1) for chosen in itertools.combinations(ALL_PACKAGES, n)]


def test_detect_agrees_with_importlib_here() -> None:
    def found(name: str) -> bool:
        return importlib.util.find_spec(name) is not None

    assert detect() == Capabilities(
        flash_attn=found("flash_attn"),
        onnx=found("onnxruntime") and found("onnx") and found("onnxscript"),
        accelerate=found("accelerate"),
    )
    assert installed(["accelerate", "surely_not_a_package_here", "onnx"]) == {
        name for name in ("accelerate", "onnx") if found(name)
    }


@pytest.mark.parametrize("present", every_environment(), ids=lambda p: "+".join(sorted(p)) or "none")
def test_detect_in_every_environment_and_what_a_node_reports_means_the_same(
    monkeypatch: pytest.MonkeyPatch, present: set[str]
) -> None:
    fake_environment(monkeypatch, present)
    found = detect()
    assert found.flash_attn == ("flash_attn" in present)
    assert found.onnx == {"onnxruntime", "onnx", "onnxscript"}.issubset(present)  # one missing is enough
    assert found.accelerate == ("accelerate" in present)
    assert found == Capabilities.from_packages(present)
    # A node reports names (the probe task's result); read on a driver with the same environment they mean the same.
    reported = installed_optional_packages()
    assert reported == present & set(NODE_PACKAGES)
    assert found.on_node(reported) == found


def test_a_nodes_report_decides_flash_and_accelerate_and_the_planning_process_onnx() -> None:
    here = Capabilities(flash_attn=False, onnx=True, accelerate=False)
    assert here.on_node(None) is here  # not looked up: this process's environment
    assert here.on_node(frozenset({"flash_attn", "accelerate"})) == Capabilities(True, True, True)
    assert Capabilities(True, False, True).on_node(frozenset()) == Capabilities(False, False, False)


def test_the_default_is_a_plain_install() -> None:
    assert Capabilities() == Capabilities.from_packages(["onnxruntime", "onnx", "onnxscript"])


def test_the_planner_refuses_what_the_capabilities_lack_in_the_existing_words() -> None:
    onnx = parse_config({"model": {"backend": "onnx"}, "mig_instances": [{"name": "a"}]})
    with pytest.raises(PlanError, match=r"^model: backend onnx: onnxruntime, onnx or onnxscript is not installed"):
        plan(onnx, CPU, BERT, Capabilities(onnx=False))
    assert plan(onnx, CPU, BERT, Capabilities(onnx=True)).instances[0].backend == "onnx"
    automatic = plan(parse_config({"mig_instances": [{"name": "a"}]}), CPU, BERT, Capabilities(onnx=False))
    assert automatic.instances[0].backend == "torch"
    assert "onnxruntime/onnx/onnxscript are not installed" in automatic.backend_lines[0]

    flash = parse_config(
        {"model": {"attn_implementation": "flash_attention_2"}, "mig_instances": [{"name": "a", "type": "gpu"}]}
    )
    with pytest.raises(PlanError, match="^model: flash_attention_2 requested but flash-attn does not import here"):
        plan(flash, L4S, QWEN3, Capabilities(flash_attn=False))
    assert plan(flash, L4S, QWEN3, Capabilities(flash_attn=True)).instances[0].backend == "torch"

    spanning = parse_config({"mig_instances": [{"name": "big", "type": "gpu", "gpus": 2}]})
    with pytest.raises(PlanError, match="^instance 'big': gpus: 2 splits the model with accelerate, which does not"):
        plan(spanning, L4S, QWEN3, Capabilities(accelerate=False))
    assert plan(spanning, L4S, QWEN3, Capabilities(accelerate=True)).instances[0].gpu.device_count == 2


def test_planning_never_looks_at_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    def find_spec(name: str, package: str | None = None) -> None:
        raise AssertionError(f"the planner looked up {name}")

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    spanning = parse_config({"mig_instances": [{"name": "big", "type": "gpu", "gpus": 2}, {"name": "c"}]})
    plan(spanning, L4S, QWEN3, Capabilities(accelerate=True))
    head = NodeTopology("id-head", "10.0.0.1", "head", True, L4S, packages=frozenset({"accelerate"}))
    plan_cluster(spanning, [head], QWEN3, Capabilities(accelerate=False))


def test_plan_command_plans_with_what_detect_finds(monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = str(REPO / "configs" / "mig_config.yaml")
    monkeypatch.setattr(capabilities, "detect", lambda: Capabilities(onnx=False))
    without = CliRunner().invoke(app, ["plan", "--config", shipped], env={"COLUMNS": "200"})
    assert without.exit_code == 0, without.output
    assert "PyTorch on CPU pools: onnxruntime/onnx/onnxscript are not installed" in without.output
    monkeypatch.setattr(capabilities, "detect", lambda: Capabilities(onnx=True))
    with_onnx = CliRunner().invoke(app, ["plan", "--config", shipped], env={"COLUMNS": "200"})
    assert with_onnx.exit_code == 0 and "ONNX Runtime on CPU pools" in with_onnx.output
