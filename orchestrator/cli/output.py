"""What the CLI prints: the consoles, the one-line failure with its exit code, and the placement table.

Every command prints through these two consoles, so piped output (logs, CI) gets wide tables instead of rich's
80-column default, and every failure reads ``error: <what happened and the fix>``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from orchestrator.config import LoadedConfig
from orchestrator.contracts.plan import Plan, PlannedInstance
from orchestrator.planning.mig_planner import estimated_memory_mib

_WIDTH = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "140"))
console = Console(highlight=False, width=_WIDTH)
error_console = Console(stderr=True, highlight=False, width=_WIDTH)

ConfigOption = Annotated[
    Path,
    typer.Option("--config", "-c", help="The YAML config (see configs/mig_config.yaml).", show_default=True),
]
DEFAULT_CONFIG = Path("configs/mig_config.yaml")


def fail(message: str, code: int) -> typer.Exit:
    """Print ``message`` as ``error:`` lines and return the exit to raise (2: config or plan, 1: starting failed)."""
    for line in message.splitlines():
        error_console.print(f"[red]error:[/red] {line}", soft_wrap=True)
    return typer.Exit(code)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}")


def _device_cell(instance: PlannedInstance) -> str:
    gpu = instance.gpu
    if gpu is None:
        return f"cpu pool {instance.rank}"
    if gpu.kind == "mig":
        return f"GPU {gpu.gpu_index} / MIG {gpu.profile} (GI {gpu.gpu_instance_id})"
    if gpu.device_count > 1:
        return f"GPUs {','.join(str(index) for index in gpu.gpu_indices)} (whole, device map)"
    return f"GPU {gpu.gpu_index} (whole)"


def plan_tables(loaded: LoadedConfig, placement: Plan) -> list[Table]:
    """One table per model, one row per planned instance (a node column when the plan spans a cluster); GPU
    instances show the memory their model is estimated to need of their slice's, and each table's caption the slice
    memory the model takes in all."""
    footprints = loaded.footprints()
    on_cluster = any(instance.node_ip for instance in placement.instances)
    columns = ("instance", "type", "device", "pinned to", "resources", "backend", "batch", "concurrency", "capacity")
    tables = []
    for model in placement.models():
        instances = [i for i in placement.instances if i.model == model]
        kinds = "+".join(sorted({i.device for i in instances}, key=["mig", "gpu", "cpu"].index))
        name = model or loaded.model_name
        table = Table(title=f"Placement of {name} ({kinds})", title_justify="left")
        on_gpu = [i for i in instances if i.gpu is not None]
        for column in ("node", *columns) if on_cluster else columns:
            table.add_column(column)
        for instance in instances:
            table.add_row(*_row(instance, on_cluster))
        if on_gpu:
            total = sum(i.gpu.memory_mb for i in on_gpu if i.gpu is not None)
            footprint = footprints.get(model or loaded.model_name)
            needs = [estimated_memory_mib(loaded.config, i, footprint) for i in on_gpu]
            known = [n for n in needs if n is not None]
            estimate = f" (estimated to need {max(known):,.0f} MiB per instance at most)" if known else ""
            table.caption = f"{name} takes {total:,} MiB of slice memory on {len(on_gpu)} GPU instance(s){estimate}"
            table.caption_justify = "left"
        tables.append(table)
    return tables


def plan_table(loaded: LoadedConfig, placement: Plan) -> Table:
    """The first model's table (a one-model plan has only this one)."""
    return plan_tables(loaded, placement)[0]


def _row(instance: PlannedInstance, on_cluster: bool) -> tuple[str, ...]:
    gpu = instance.gpu
    pinned = ",".join(gpu.device_uuids) if gpu else "cores " + ",".join(str(core) for core in instance.cpu_cores)
    memory = f"{gpu.memory_mb} MiB, {gpu.sm_count} SMs" if gpu else f"{instance.threads} thread(s)"
    return (
        *((instance.node_ip or "",) if on_cluster else ()),
        instance.name,
        instance.profile,
        _device_cell(instance),
        pinned,
        memory,
        instance.backend,
        str(instance.batch_size),
        str(instance.max_concurrency),
        str(instance.capacity),
    )


def print_plan(loaded: LoadedConfig, placement: Plan, gpu_note: str | None) -> None:
    """The placement as ``plan`` and ``up`` show it: the hardware note, each model and its table, backend lines,
    notes."""
    if gpu_note:
        console.print(gpu_note)
    for model in loaded.served():
        aliases = f" (also answers to {', '.join(model.aliases)})" if model.aliases else ""
        console.print(f"Model: {model.name} from {model.folder}{aliases}")
    for table in plan_tables(loaded, placement):
        console.print(table)
    for line in placement.backend_lines:
        console.print(line)
    for note in placement.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
