"""GPU commands of the CLI: ``orchestrator mig plan`` (and ``--apply``), ``doctor`` and ``worker``."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from orchestrator.cli.output import console, fail
from orchestrator.config import load_config
from orchestrator.contracts.errors import ConfigError, PlanError
from orchestrator.doctor import TORCH_MISSING, TORCH_NOT_CHECKED, Check, run_checks, serving_checks
from orchestrator.hardware.probe import probe_topology
from orchestrator.planning.mig_layout import LayoutPlan, plan_layout
from orchestrator.serving.ray_access import RayAccessError, cluster_access
from orchestrator.serving.slice_claims import NodeOffer, offer_of_topology

mig_app = typer.Typer(help="Partition GPUs with MIG to match the config.", no_args_is_help=True, rich_markup_mode=None)

_STATUS_STYLE = {"pass": "[green]pass[/green]", "warn": "[yellow]warn[/yellow]", "fail": "[red]FAIL[/red]"}


def _print_layout(layout: LayoutPlan) -> None:
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
    try:
        loaded = load_config(config)
        layout = plan_layout(loaded.config, probe_topology())
    except (ConfigError, PlanError) as error:
        raise fail(error.message, 2) from None
    _print_layout(layout)
    if not layout.commands:
        console.print("Nothing to do: every GPU already has the layout.")
        return
    if not apply:
        console.print("Dry run: nothing was changed. Run again with --apply (as root) to execute.")
        return
    if os.geteuid() != 0:
        raise fail("--apply needs root: run it with sudo", 1)
    destroys = [d for g in layout.gpus for d in g.destroys]
    if destroys and not yes and not typer.confirm(f"Destroy {len(destroys)} existing MIG instance(s)?"):
        raise typer.Exit(1)
    from orchestrator.mig_apply import apply_layout

    with console.status("Applying the layout through NVML (each GPU instance at its planned placement)..."):
        result = apply_layout(loaded.config, layout)
    for line in result.lines:
        console.print(line)
    if not result.ok:
        raise fail("\n".join(result.differences), 1)
    console.print(
        "[green]Done[/green]: the GPUs hold the planned layout. Check with: orchestrator plan --config " + str(config)
    )


def doctor_command(
    gpu: Annotated[
        bool, typer.Option("--gpu", help="Also self-test each GPU or MIG slice the config would use (a child each).")
    ] = False,
    config: Annotated[Path, typer.Option("--config", "-c", help="The config whose GPU instances --gpu tests.")] = Path(
        "configs/mig_config.yaml"
    ),
) -> None:
    """Check the driver, torch, MIG modes, busy GPUs, the container, the ONNX backend and cache and the port; print each
    fix."""
    topology = probe_topology()
    checks = run_checks(topology, os.environ, _torch_cuda_build() if topology.gpus else TORCH_NOT_CHECKED)
    checks += _serving_checks(config)
    table = Table(title="orchestrator doctor", title_justify="left")
    for column in ("check", "result", "detail", "fix"):
        table.add_column(column)
    for check in checks:
        table.add_row(check.name, _STATUS_STYLE[check.status], check.detail, check.fix)
    console.print(table)
    failed = sum(check.status == "fail" for check in checks)
    if gpu:
        failed += not _self_test_gpus(config)
    if failed:
        raise typer.Exit(1)


def _serving_checks(config: Path) -> list[Check]:
    """The config's backend, export cache and port on this machine (a config that does not load or plan says so)."""
    from orchestrator import steps

    try:
        loaded = steps.load(config)
        placement, _ = steps.plan_here(loaded)
    except (ConfigError, PlanError) as error:
        first = error.message.splitlines()[0]
        return [Check("config", "warn", f"{config}: {first}", "orchestrator plan --config FILE shows every problem")]
    return serving_checks(steps.serving_facts(loaded, placement))


def _self_test_gpus(config: Path) -> bool:
    """``doctor --gpu``: one pinned self-test per GPU instance of the config's plan here; True when all passed."""
    from orchestrator.gpu_doctor import doctor_gpu

    try:
        with console.status("Self-testing each GPU instance of the plan (a pinned child process each)..."):
            report = doctor_gpu(str(config))
    except (ConfigError, PlanError) as error:
        raise fail(error.message, 2) from None
    for line in report.lines():
        console.print(line, soft_wrap=True)
    return report.ok


def _torch_cuda_build() -> str | None:
    """``torch.version.cuda`` (None for a CPU build), or TORCH_MISSING; imports torch, so only on a GPU machine."""
    try:
        import torch
    except ImportError:
        return TORCH_MISSING
    return torch.version.cuda


def ray_worker_command(address: str | None, extra: list[str], offer: NodeOffer | None = None) -> list[str]:
    """The ``ray start`` line that joins a node to the cluster at ``address`` (None: starts the cluster's head), in
    the foreground, offering the node's GPUs and MIG slices (``offer``) unless ``extra`` sets them itself."""
    where = ["--head"] if address is None else ["--address", address]
    given = {option for option in ("--num-gpus", "--resources") for arg in extra if arg.split("=")[0] == option}
    offered = offer.ray_start_args(leave_out=given) if offer is not None else []
    return ["ray", "start", *where, "--block", *offered, *extra]


def worker_command(
    address: Annotated[
        str | None,  # noqa: UP007
        typer.Option(help="The head's Ray address, host:6379 (what `ray start --head` printed)."),
    ] = None,
    head: Annotated[
        bool, typer.Option("--head", help="Start the cluster's head node here instead of joining one.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what this node offers and the command.")] = False,
    ray_args: Annotated[
        list[str] | None,  # noqa: UP007
        typer.Argument(help="Extra `ray start` options, after --, e.g. -- --num-cpus 8."),
    ] = None,
) -> None:
    """Join this machine to a Ray cluster as a worker node (or start the head with --head), so `orchestrator up`
    on the head can use its slices.

    Probes this node through NVML, prints its GPUs and MIG slices, then runs `ray start --address ADDRESS --block`
    offering Ray each free MIG slice as a resource of its profile (`mig_1g.10gb`) and the GPUs with MIG off as GPUs.
    """
    # `up` places each node's replicas with Ray's node-id label, claims each slice's resource (so a second service
    # cannot book it twice) and pins each replica to its slice by MIG UUID itself. The machine needs the same
    # environment as the head.
    from orchestrator.hardware.cluster_probe import NodeTopology, describe_node

    if (address is None) == (not head):
        raise fail("give the head's address (--address host:6379) to join a cluster, or --head to start one", 2)
    topology = probe_topology()
    if topology.gpu_note:
        console.print(f"[yellow]note:[/yellow] {topology.gpu_note.removesuffix('; serving on CPU pools.')}")
    for warning in topology.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    node = NodeTopology(node_id="", node_ip="this node", hostname=os.uname().nodename, is_head=head, topology=topology)
    console.print(describe_node(node, "this node"))
    offer = offer_of_topology(topology)
    console.print(f"offers Ray: {offer.describe()}")
    pending = [gpu.index for gpu in topology.gpus if gpu.mig_reset_pending]
    if pending:
        console.print(
            f"[yellow]warning:[/yellow] GPU {pending} wait for a reset before MIG applies (run `orchestrator doctor`)"
        )
    try:
        access = cluster_access(os.environ)  # `ray start` joins only with the cluster's token (README)
    except RayAccessError as error:
        raise fail(error.message, 2) from None
    for warning in access.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    command = ray_worker_command(None if head else address, list(ray_args or []), offer)
    console.print("$ " + shlex.join(command))
    if dry_run:
        return
    access.apply(os.environ)
    try:
        os.execvp(command[0], command)  # replaces this process: Ctrl-C and exit codes are ray's own
    except OSError as error:
        raise fail(f"could not run `ray start` ({error.strerror}): install ray[serve] in this environment", 1) from None
