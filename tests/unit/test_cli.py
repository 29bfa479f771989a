"""The typer app in-process: plan, help, and failures as one line with exit code 2."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from orchestrator.cli import app
from tests.conftest import REPO, SEED_CONFIG

runner = CliRunner()


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "up" in result.output and "plan" in result.output
    up_help = runner.invoke(app, ["up", "--help"])
    assert "--config" in up_help.output and "--port" in up_help.output


def test_plan_prints_the_placement_of_the_shipped_config() -> None:
    result = runner.invoke(app, ["plan", "--config", str(REPO / "configs" / "mig_config.yaml")])
    assert result.exit_code == 0, result.output
    assert "serving on CPU pools" in result.output
    assert "embedding-instance-1" in result.output and "cpu pool 0" in result.output


def test_seed_config_as_written_fails_with_one_line_per_problem() -> None:
    result = runner.invoke(app, ["plan", "--config", str(SEED_CONFIG)])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 3 and all("model_path" in line for line in errors)
    assert "Traceback" not in result.output


def test_missing_file_and_unknown_key(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["plan", "--config", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "file not found" in missing.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("mig_instances:\n  - name: a\n    colour: blue\n")
    result = runner.invoke(app, ["up", "--config", str(bad)])  # fails before Ray starts
    assert result.exit_code == 2
    assert f"error: {bad}: mig_instances[0].colour: unknown key" in result.output


def test_up_refuses_a_busy_port_in_one_line_before_starting_ray() -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = runner.invoke(app, ["up", "--config", str(REPO / "configs" / "mig_config.yaml"), "--port", str(port)])
    assert result.exit_code == 1
    assert f"error: 127.0.0.1:{port} is already in use: stop what holds it, or pass --port N" in result.output
    assert "Traceback" not in result.output


def test_mig_plan_dry_run_then_apply(tmp_path: Path, monkeypatch) -> None:
    """Dry run prints the commands; --apply needs root, refuses a GPU in use before changing anything, and otherwise
    leaves the GPU holding the planned layout (applied through the strict fake NVML, then probed again)."""
    import copy
    import json

    import orchestrator.cli.gpu as cli_gpu
    from orchestrator.hardware import probe
    from tests.fake_nvml import FIXTURES, install_fake_nvml

    seven_1g = json.loads((FIXTURES / "a100_40gb_7x1g5gb.json").read_text())
    install_fake_nvml(monkeypatch, copy.deepcopy(seven_1g))  # process 31337 runs on one of the slices
    config = tmp_path / "c.yaml"
    config.write_text("mig_instances:\n  - name: big\n    type: 3g.20gb\n  - name: small\n    type: 1g.5gb\n")
    dry = runner.invoke(app, ["mig", "plan", "--config", str(config)])
    assert dry.exit_code == 0, dry.output
    assert "-cgi" in dry.output and "Dry run" in dry.output and dry.output.count("destroys") == 7

    monkeypatch.setattr(cli_gpu.os, "geteuid", lambda: 1000)
    not_root = runner.invoke(app, ["mig", "plan", "--config", str(config), "--apply", "--yes"])
    assert not_root.exit_code == 1 and "needs root" in not_root.output
    monkeypatch.setattr(cli_gpu.os, "geteuid", lambda: 0)
    busy = runner.invoke(app, ["mig", "plan", "--config", str(config), "--apply", "--yes"], env={"COLUMNS": "200"})
    assert busy.exit_code == 1 and "used by process(es) 31337: stop them first; nothing was changed" in busy.output
    assert len(probe.probe_topology().gpus[0].slices) == 7

    seven_1g["gpus"][0]["processes"] = []
    install_fake_nvml(monkeypatch, seven_1g)
    applied = runner.invoke(app, ["mig", "plan", "--config", str(config), "--apply", "--yes"], env={"COLUMNS": "200"})
    assert applied.exit_code == 0, applied.output
    assert "Done" in applied.output and applied.output.count("destroyed GPU instance") == 7
    assert sorted(s.profile for s in probe.probe_topology().gpus[0].slices) == ["1g.5gb", "3g.20gb"]


def test_doctor_exit_code_follows_failures(monkeypatch) -> None:
    import dataclasses

    import orchestrator.cli.gpu as cli_gpu
    from tests.unit.test_mig_planner import a100, topo

    monkeypatch.setattr(cli_gpu, "probe_topology", lambda: topo(a100(mig_enabled=False, mig_pending_enabled=True)))
    failing = runner.invoke(app, ["doctor"])
    assert failing.exit_code == 1 and "sudo nvidia-smi -r -i 0" in failing.output
    healthy = dataclasses.replace(topo(a100()), driver_version="550.54.15", cuda_driver_version=12040)
    monkeypatch.setattr(cli_gpu, "probe_topology", lambda: healthy)
    monkeypatch.setattr(cli_gpu, "_torch_cuda_build", lambda: "12.1")  # a GPU machine has a CUDA build of torch
    assert runner.invoke(app, ["doctor"]).exit_code == 0


def test_status_without_a_service_is_one_line() -> None:
    from tests.integration.conftest import free_port

    result = runner.invoke(app, ["status", "--url", f"http://127.0.0.1:{free_port()}"])
    assert result.exit_code == 1
    assert "no orchestrator answers at" in result.output and "start it with orchestrator up" in result.output


def test_worker_dry_run_shows_the_nodes_slices_and_the_ray_command(monkeypatch) -> None:
    from tests.fake_nvml import install_fake_nvml

    install_fake_nvml(monkeypatch, "a100_80gb_mixed")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "the-clusters-token")
    result = runner.invoke(app, ["worker", "--address", "10.0.0.1:6379", "--dry-run", "--", "--num-cpus", "8"])
    assert result.exit_code == 0, result.output
    assert "MIG 3g.40gb, 2g.20gb, 1g.10gb x2" in result.output
    # Each free slice becomes a Ray resource of its profile; the GPU with MIG on is no whole GPU to Ray.
    assert "offers Ray: GPU 0, mig_1g.10gb 2, mig_2g.20gb 1, mig_3g.40gb 1" in result.output
    resources = """'{"mig_1g.10gb":2,"mig_2g.20gb":1,"mig_3g.40gb":1}'"""
    assert (
        f"$ ray start --address 10.0.0.1:6379 --block --num-gpus 0 --resources {resources} --num-cpus 8"
        in result.output
    )


def test_worker_head_and_the_operators_own_resources(monkeypatch) -> None:
    from tests.fake_nvml import install_fake_nvml

    install_fake_nvml(monkeypatch, "a100_80gb_mixed")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "the-clusters-token")
    result = runner.invoke(app, ["worker", "--head", "--dry-run", "--", "--resources={}", "--num-gpus=1"])
    assert result.exit_code == 0, result.output
    # What the operator passes is theirs: ours is left out rather than given twice (ray start would refuse).
    assert "$ ray start --head --block '--resources={}' --num-gpus=1\n" in result.output
    neither = runner.invoke(app, ["worker", "--dry-run"])
    assert neither.exit_code == 2 and "--address host:6379" in neither.output and "--head" in neither.output


def test_worker_on_a_node_without_nvidia_driver_says_so(monkeypatch) -> None:
    from tests.fake_nvml import install_fake_nvml

    install_fake_nvml(monkeypatch, "library_missing")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "the-clusters-token")
    result = runner.invoke(app, ["worker", "--address", "10.0.0.1:6379", "--dry-run"])
    assert result.exit_code == 0 and "no GPU" in result.output and "Traceback" not in result.output


def test_worker_without_the_clusters_token_is_refused_with_the_fix(monkeypatch, tmp_path: Path) -> None:
    from tests.fake_nvml import install_fake_nvml

    install_fake_nvml(monkeypatch, "library_missing")
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "auth_token"))
    result = runner.invoke(app, ["worker", "--address", "10.0.0.1:6379", "--dry-run"])
    assert result.exit_code == 2, result.output
    assert "does not exist" in result.output and "ray get-auth-token --generate" in result.output
    assert "$ ray start" not in result.output

    (tmp_path / "auth_token").write_text("t0ken")
    (tmp_path / "auth_token").chmod(0o644)
    result = runner.invoke(app, ["worker", "--address", "10.0.0.1:6379", "--dry-run"])
    assert result.exit_code == 2 and "can be read by other users" in result.output and "chmod 600" in result.output

    (tmp_path / "auth_token").chmod(0o600)
    result = runner.invoke(app, ["worker", "--address", "10.0.0.1:6379", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "$ ray start --address 10.0.0.1:6379 --block" in result.output


def test_status_readiness_line_from_health() -> None:
    from orchestrator.cli.status import readiness_line

    assert readiness_line({"status": "degraded", "instances_ready": 1, "instances_planned": 2}) == (
        "instances ready 1/2 (degraded)"
    )
    assert readiness_line(None) == "instances ready: unknown (no /health answer)"


def test_up_with_an_onnx_cache_that_cannot_work_fails_in_one_line_before_ray(tmp_path: Path) -> None:
    """Issue 14, finding 8: a file in place of the cache folder surfaced as Serve's "Failed to update the
    deployments" after every replica had tried six times."""
    blocker = tmp_path / "cache"
    blocker.write_text("a file, not a folder")
    config = (REPO / "configs" / "mig_config.yaml").read_text()
    config = config.replace("model:\n", f"model:\n  onnx_cache_dir: {blocker / 'onnx'}\n", 1)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(config)
    result = runner.invoke(app, ["up", "--config", str(config_path)])
    assert result.exit_code == 1, result.output
    assert f"error: the ONNX cache path {blocker} is a file, not a folder: remove it or set model.onnx_cache_dir" in (
        result.output
    )
    assert "Starting Ray" not in result.output and "Traceback" not in result.output


def test_a_replica_failure_is_reported_by_its_exception_not_serves_summary() -> None:
    from orchestrator.serving.deploy import failure_reason

    # Serve's deployment message when a replica's constructor raised (abridged from a real run, Ray 2.60).
    message = """The deployment failed to start 6 times in a row. This may be due to a problem with its constructor \
or initial health check failing. See controller logs for details. Error:
ray::ServeReplica:embeddings:EmbeddingReplica.initialize_and_get_metadata() (pid=25683, ip=127.0.0.1)
  File "ray/serve/_private/replica.py", line 1928, in initialize
    raise RuntimeError(traceback.format_exc()) from None
RuntimeError: Traceback (most recent call last):
  File "/work/main/workers/backends/onnx_export.py", line 62, in check_cache_dir
    raise OnnxExportError(f"the ONNX cache path {parent} is a file, not a folder: remove it or {fix}")
workers.backends.onnx_export.OnnxExportError: the ONNX cache path /tmp/blockfile is a file, not a folder: remove it
"""
    assert failure_reason(message) == (
        "OnnxExportError: the ONNX cache path /tmp/blockfile is a file, not a folder: remove it"
    )
    assert failure_reason("Failed to update the deployments ['EmbeddingReplica'].") == (
        "Failed to update the deployments ['EmbeddingReplica']."
    )


def test_version_and_flags_read_as_flags() -> None:
    from importlib.metadata import version

    assert runner.invoke(app, ["--version"]).output.strip() == f"mig-orchestrator {version('mig-orchestrator')}"
    help_text = runner.invoke(app, ["up", "--help"]).output
    verbose = next(line for line in help_text.splitlines() if "--verbose" in line)
    assert "<bool>" not in verbose and "-v, --verbose" in verbose  # a flag takes no value
    assert "--port <int>" in help_text


def test_status_finds_the_service_up_runs_not_the_config_in_the_working_folder(tmp_path: Path, monkeypatch) -> None:
    """Without --url or --config, status asks the service an up on this machine recorded (stale entries ignored)."""
    from orchestrator import running
    from tests.integration.conftest import free_port

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # no configs/mig_config.yaml here: nothing to read a port from by accident
    none = runner.invoke(app, ["status"])
    assert none.exit_code == 1 and "no orchestrator up is running on this machine" in none.output
    url = f"http://127.0.0.1:{free_port()}"
    entry = running.record(url, tmp_path / "mine.yaml")
    stale = entry.with_name("999999999.json")  # a pid no process has
    stale.write_text('{"pid": 999999999, "url": "http://127.0.0.1:1", "config": "/gone.yaml"}')
    asked = runner.invoke(app, ["status"])
    assert asked.exit_code == 1 and f"no orchestrator answers at {url}" in asked.output
    assert not stale.exists() and [s.url for s in running.running_services()] == [url]
    running.forget(entry)
    assert running.running_services() == []
