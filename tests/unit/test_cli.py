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
