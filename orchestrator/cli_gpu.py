"""GPU commands of the CLI: ``orchestrator mig plan`` (and ``--apply``) and ``orchestrator doctor``."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from orchestrator.config import load_config
from orchestrator.doctor import run_checks
from orchestrator.errors import ConfigError, PlanError
from orchestrator.hardware.probe import probe_topology
from orchestrator.mig_layout import LayoutPlan, plan_layout

mig_app = typer.Typer(help="Partition GPUs with MIG to match the config.", no_args_is_help=True)

_STATUS_STYLE = {"pass": "[green]pass[/green]", "warn": "[yellow]warn[/yellow]", "fail": "[red]FAIL[/red]"}


def run_command(command: str) -> subprocess.CompletedProcess[str]:
    """Run one nvidia-smi command (a seam for tests)."""
    return subprocess.run(shlex.split(command), capture_output=True, text=True, check=False)


def _print_layout(layout: LayoutPlan) -> None:
    from orchestrator.cli import console

    for gpu_layout in layout.gpus:
        gpu = gpu_layout.gpu
        names = ", ".join(p.name for p in gpu_layout.profiles)
        console.print(f"GPU {gpu.index} ({gpu.name}): {names}")
        for destroyed in gpu_layout.destroys:
            console.print(f"  [yellow]destroys[/yellow] {destroyed}")
        for note in gpu_layout.notes:
            console.print(f"  note: {note}")
        for command in gpu_layout.commands:
            console.print(f"  sudo {command}")


@mig_app.command("plan")
def mig_plan_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="The YAML config.")] = Path("configs/mig_config.yaml"),
    apply: Annotated[bool, typer.Option("--apply", help="Run the commands (root only).")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before destroying instances.")] = False,
) -> None:
    """Print the nvidia-smi commands that create the config's MIG layout; run them with --apply."""
    from orchestrator.cli import _fail, console

    try:
        loaded = load_config(config)
        layout = plan_layout(loaded.config, probe_topology())
    except (ConfigError, PlanError) as error:
        raise _fail(error.message, 2) from None
    _print_layout(layout)
    if not layout.commands:
        console.print("Nothing to do: every GPU already has the layout.")
        return
    if not apply:
        console.print("Dry run: nothing was changed. Run again with --apply (as root) to execute.")
        return
    if os.geteuid() != 0:
        raise _fail("--apply needs root: run it with sudo", 1)
    destroys = [d for g in layout.gpus for d in g.destroys]
    if destroys and not yes and not typer.confirm(f"Destroy {len(destroys)} existing MIG instance(s)?"):
        raise typer.Exit(1)
    for command in layout.commands:
        console.print(f"$ {command}")
        result = run_command(command)
        output = (result.stdout + result.stderr).strip()
        if output:
            console.print(output)
        if result.returncode != 0:
            raise _fail(f"'{command}' failed (exit {result.returncode}); nothing after it was run", 1)
    console.print("[green]Done.[/green] Check with: orchestrator plan --config " + str(config))


def doctor_command() -> None:
    """Check the driver, MIG modes, processes holding GPUs and container settings; print each fix."""
    from orchestrator.cli import console

    checks = run_checks(probe_topology(), os.environ)
    table = Table(title="orchestrator doctor", title_justify="left")
    for column in ("check", "result", "detail", "fix"):
        table.add_column(column)
    for check in checks:
        table.add_row(check.name, _STATUS_STYLE[check.status], check.detail, check.fix)
    console.print(table)
    failed = sum(check.status == "fail" for check in checks)
    if failed:
        raise typer.Exit(1)
