"""The ``orchestrator`` command: parse options, call the steps, print tables, map failures to exit codes.

``up`` reads like its steps: load config -> probe hardware -> plan -> open the front door -> start Ray -> deploy ->
wait healthy -> forward requests until stopped. Every failure is one line with the fix; exit code 2 means the
config or plan is wrong (nothing was started), 1 means starting failed.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from orchestrator import capabilities
from orchestrator.config import LoadedConfig, load_config
from orchestrator.contracts.errors import ConfigError, OrchestratorError, PlanError
from orchestrator.hardware.probe import probe_topology
from orchestrator.planning.planner import Plan, PlannedInstance, plan
from orchestrator.serving.control_plane import ControlPlaneWatch, adopt_orphans, kill_descendants
from orchestrator.serving.ray_access import RayAccessError

if TYPE_CHECKING:
    from orchestrator.frontdoor.server import FrontDoorServer

app = typer.Typer(
    help="Serve text-embedding models with one replica per MIG slice (or CPU pool), behind one endpoint.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (logs, CI) gets wide tables instead of rich's 80-column default.
LOST_NOTICE_S = 5.0
_WIDTH = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "140"))
console = Console(highlight=False, width=_WIDTH)
error_console = Console(stderr=True, highlight=False, width=_WIDTH)

ConfigOption = Annotated[
    Path,
    typer.Option("--config", "-c", help="The YAML config (see configs/mig_config.yaml).", show_default=True),
]
DEFAULT_CONFIG = Path("configs/mig_config.yaml")


def _fail(message: str, code: int) -> typer.Exit:
    for line in message.splitlines():
        error_console.print(f"[red]error:[/red] {line}", soft_wrap=True)
    return typer.Exit(code)


def _load(config_path: Path, port: int | None = None) -> LoadedConfig:
    try:
        loaded = load_config(config_path)
    except ConfigError as error:
        raise _fail(error.message, 2) from None
    if port is not None:
        server = loaded.config.server.model_copy(update={"port": port})
        loaded = loaded.model_copy(update={"config": loaded.config.model_copy(update={"server": server})})
    return loaded


def _load_and_plan(config_path: Path, port: int | None = None) -> tuple[LoadedConfig, Plan, str | None]:
    loaded = _load(config_path, port)
    placement, gpu_note = _plan_here(loaded)
    return loaded, placement, gpu_note


def _plan_here(loaded: LoadedConfig) -> tuple[Plan, str | None]:
    """The placement on this machine's hardware (a config with ``ray.address`` is planned over the cluster
    instead, once joined: ``_plan_on_cluster``)."""
    try:
        topology = probe_topology()
        placement = plan(loaded.config, topology, loaded.footprint, capabilities.detect())
    except (ConfigError, PlanError) as error:
        raise _fail(error.message, 2) from None
    return placement, topology.gpu_note


def _device_cell(instance: PlannedInstance) -> str:
    gpu = instance.gpu
    if gpu is None:
        return f"cpu pool {instance.rank}"
    if gpu.kind == "mig":
        return f"GPU {gpu.gpu_index} / MIG {gpu.profile} (GI {gpu.gpu_instance_id})"
    if gpu.device_count > 1:
        return f"GPUs {','.join(str(index) for index in gpu.gpu_indices)} (whole, device map)"
    return f"GPU {gpu.gpu_index} (whole)"


def _plan_table(loaded: LoadedConfig, placement: Plan) -> Table:
    table = Table(title=f"Placement of {loaded.model_name} ({placement.device_kind})", title_justify="left")
    on_cluster = any(instance.node_ip for instance in placement.instances)
    columns = ("instance", "type", "device", "pinned to", "resources", "backend", "batch", "concurrency", "capacity")
    for column in ("node", *columns) if on_cluster else columns:
        table.add_column(column)
    for instance in placement.instances:
        gpu = instance.gpu
        pinned = ",".join(gpu.device_uuids) if gpu else "cores " + ",".join(str(core) for core in instance.cpu_cores)
        memory = f"{gpu.memory_mb} MiB, {gpu.sm_count} SMs" if gpu else f"{instance.threads} thread(s)"
        table.add_row(
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
    return table


def _plan_on_cluster(loaded: LoadedConfig) -> Plan:
    """With ``ray.address``: probe every node (one Ray task each), print them, and plan over all of them."""
    from orchestrator.hardware.cluster_probe import describe_node, discover_nodes, node_names
    from orchestrator.planning.cluster_planner import plan_cluster

    nodes, warnings = discover_nodes()
    for warning in warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    names = node_names(nodes)
    for node in nodes:
        console.print(describe_node(node, names[node.node_id]))
    placement = plan_cluster(loaded.config, nodes, loaded.footprint, capabilities.detect())
    _print_plan(loaded, placement, None)
    return placement


def _print_plan(loaded: LoadedConfig, placement: Plan, gpu_note: str | None) -> None:
    if gpu_note:
        console.print(gpu_note)
    console.print(f"Model: {loaded.model_name} from {loaded.model_folder}")
    console.print(_plan_table(loaded, placement))
    for line in placement.backend_lines:
        console.print(line)
    for note in placement.notes:
        console.print(f"[yellow]note:[/yellow] {note}")


@app.command("plan")
def plan_command(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Validate the config against the hardware and print the placement; starts nothing.

    With ``ray.address`` the cluster is joined (a driver that deploys nothing), every node probed and the config
    planned over all of them, exactly as ``up`` will; otherwise this machine is probed.
    """
    loaded = _load(config)
    if not loaded.config.ray.address:
        placement, gpu_note = _plan_here(loaded)
        _print_plan(loaded, placement, gpu_note)
        return
    from orchestrator.serving import deploy

    try:
        with console.status(f"Joining the Ray cluster at {loaded.config.ray.address} to probe its nodes..."):
            for warning in deploy.connect_ray(loaded):
                console.print(f"[yellow]warning:[/yellow] {warning}")
        _plan_on_cluster(loaded)
    except (PlanError, RayAccessError) as error:
        raise _fail(error.message, 2) from None
    finally:
        deploy.disconnect_ray()


def _prepare_onnx_graph(config_path: Path, loaded: LoadedConfig, placement: Plan) -> None:
    """Export the ONNX graph before Ray starts when this machine's replicas need one and the cache lacks it.

    A cache that cannot work (a file in its place, a read-only or full disk) then fails here in one line with the
    fix, instead of as Serve's "Failed to update the deployments" after every replica tried six times. The export
    runs as ``orchestrator export`` in a child process: torch and the model never stay in this process's memory.
    """
    if loaded.config.ray.address or not any(instance.backend == "onnx" for instance in placement.instances):
        return  # on a cluster each node fills its own cache; replicas report a failure with its reason
    from workers.onnx_export import cache_key, default_cache_dir, entry_is_valid

    model = loaded.config.model
    root = Path(model.onnx_cache_dir) if model.onnx_cache_dir else default_cache_dir()
    if entry_is_valid(root / cache_key(loaded.model_folder, model.quantize)):
        return
    with console.status(f"Exporting {loaded.model_name} to ONNX (first start only; about 10-20 s on 2 cores)..."):
        command = [sys.executable, "-m", "orchestrator.cli", "export", "--config", str(config_path)]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "500"})
    if done.returncode != 0:
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        reason = next((line for line in reversed(lines) if line.startswith("error: ")), lines[-1] if lines else "")
        raise _fail(reason.removeprefix("error: ") or f"the ONNX export failed (exit code {done.returncode})", 1)
    console.print((done.stdout.strip().splitlines() or [""])[-1])


def _stop_on_signals(stop: threading.Event) -> None:
    """The first SIGINT/SIGTERM sets ``stop`` (drain, then exit); a second one exits at once, whatever is hanging."""

    def handle(signum: int, _frame: object) -> None:
        if not stop.is_set():
            stop.set()
            return
        console.print("[yellow]Second signal: stopping now, without draining.[/yellow]")
        kill_descendants()
        os._exit(128 + signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handle)


@app.command("up")
def up_command(
    config: ConfigOption = DEFAULT_CONFIG,
    port: Annotated[int | None, typer.Option(help="Override server.port from the config.")] = None,  # noqa: UP007
    timeout_s: Annotated[float, typer.Option(help="Seconds to wait for every replica to load.")] = 300.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Ray's and the replicas' logs.")] = False,
) -> None:
    """Start the service: plan, start Ray, deploy one replica per slice or CPU pool, serve until Ctrl-C."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    loaded = _load(config, port)
    placement: Plan | None = None  # with ray.address: planned once, over the cluster, after joining it
    if not loaded.config.ray.address:
        placement, gpu_note = _plan_here(loaded)
        _print_plan(loaded, placement, gpu_note)
        _prepare_onnx_graph(config, loaded, placement)
    adopt_orphans()  # Ray's agents outlive a dead raylet: re-parented here, they are ended with us
    server = loaded.config.server
    from orchestrator.frontdoor.server import front_door_server_for
    from orchestrator.serving import deploy

    front = front_door_server_for(loaded)
    try:
        front.start()  # binds the port now: a busy port fails before Ray; clients get 503 "starting" meanwhile
    except OrchestratorError as error:
        raise _fail(error.message, 1) from None
    started = time.monotonic()
    try:
        with console.status("Starting Ray...") as status:
            for warning in deploy.start_ray(loaded):
                console.print(f"[yellow]warning:[/yellow] {warning}")
            if placement is None:
                status.update("Probing every node of the cluster...")
                placement = _plan_on_cluster(loaded)
            expected = len(placement.instances)

            def progress(ready: int, total: int) -> None:
                status.update(f"Loading {loaded.model_name}: {ready}/{total} instances ready...")

            status.update(f"Loading {loaded.model_name} on {expected} instance(s)...")
            lane_token = deploy.deploy(loaded, placement, timeout_s=timeout_s, on_progress=progress)
            status.update("Connecting the front door to every instance...")
            deploy.attach_front_door(front, loaded, placement, lane_token)
    except (PlanError, RayAccessError) as error:  # the cluster cannot hold the config or be joined: nothing deployed
        _stop(front)
        raise _fail(error.message, 2) from None
    except OrchestratorError as error:
        _stop(front)
        raise _fail(f"{error.message} (run with --verbose to see the replicas' logs)", 1) from None
    except Exception as error:  # Ray's own failures arrive as long tracebacks: keep the last line
        _stop(front)
        last_line = (str(error).strip().splitlines() or [type(error).__name__])[-1]
        raise _fail(f"starting the service failed: {last_line} (run with --verbose for details)", 1) from None
    except KeyboardInterrupt:
        _stop(front)
        raise typer.Exit(130) from None
    url = f"http://{server.host}:{server.port}"
    console.print(f"[green]Ready[/green] in {time.monotonic() - started:.1f} s: {len(placement.instances)} instance(s)")
    console.print(f"Serving {loaded.model_name} at {url}  (POST /v1/embeddings, POST /embed, GET /health, GET /info)")
    console.print("Press Ctrl-C to stop.")
    stop = threading.Event()
    _stop_on_signals(stop)
    watch = ControlPlaneWatch(deploy.control_plane_problem, on_lost=lambda _: stop.set())
    front.front_door.watch_control_plane(lambda: watch.lost)
    watch.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        watch.stop()
        if watch.lost is not None:
            console.print(f"Ray's control plane is gone ({watch.lost}): finishing in-flight requests, then stopping")
            # /health answers 503 meanwhile: a load balancer polling it takes this endpoint out before it closes.
            time.sleep(LOST_NOTICE_S)
        with console.status("Stopping: finishing in-flight requests..."):
            _stop(front)
        console.print("Stopped.")
    if watch.lost is not None:
        raise _fail("stopped because Ray's control plane is gone: start it again with orchestrator up", 1)


def _stop(front: FrontDoorServer) -> None:
    """Stop taking requests and finish those in flight, then stop Serve and Ray, and end any process left."""
    from orchestrator.serving import deploy
    from orchestrator.serving.quiet_shutdown import quiet_serve_shutdown

    with quiet_serve_shutdown():
        try:
            front.stop()
        finally:
            try:
                deploy.shutdown()
            finally:
                kill_descendants()  # what Ray left (agents of a dead raylet, a worker stuck in a call)


@app.command("export")
def export_command(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Export the config's model to ONNX into the cache now (for images and slow disks); `up` then reuses it."""
    loaded, placement, _ = _load_and_plan(config)
    if not any(instance.backend == "onnx" for instance in placement.instances):
        console.print("No instance uses the onnx backend here: nothing to export.")
        return
    from pathlib import Path as _Path

    from workers.onnx_export import OnnxExportError, cached_graph

    model = loaded.config.model
    cache_dir = _Path(model.onnx_cache_dir) if model.onnx_cache_dir else None
    try:
        with console.status(f"Exporting {loaded.model_name} to ONNX (about 10-20 s on 2 cores)..."):
            graph = cached_graph(loaded.model_folder, cache_dir, model.quantize)
    except OnnxExportError as error:
        raise _fail(f"{error} (backend: torch serves without ONNX)", 1) from None
    if graph.exported_now:
        console.print(f"Exported in {graph.export_seconds:.1f} s: {graph.path}")
    else:
        console.print(f"Already cached (valid): {graph.path}")


def _register_gpu_commands() -> None:
    from orchestrator.cli_gpu import doctor_command, mig_app, worker_command
    from orchestrator.cli_status import status_command

    app.add_typer(mig_app, name="mig")
    app.command("doctor")(doctor_command)
    app.command("worker")(worker_command)
    app.command("status")(status_command)


_register_gpu_commands()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
