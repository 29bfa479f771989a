"""The serving verbs: ``up``, ``plan`` and ``export``, each a straight sequence of calls into ``orchestrator.steps``.

This module owns what the user sees while the steps run (progress lines, the placement table, Ready/Stopped) and
which exit code each failure gets; the steps themselves print nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from orchestrator import running, steps
from orchestrator.cli.output import DEFAULT_CONFIG, ConfigOption, console, fail, print_plan, warn
from orchestrator.config import LoadedConfig, ServedModel
from orchestrator.contracts.errors import ConfigError, OrchestratorError, PlanError
from orchestrator.contracts.plan import Plan
from orchestrator.frontdoor.worker_count import front_door_workers
from orchestrator.search_route import search_settings
from orchestrator.serving.control_plane import ControlPlaneWatch, SignalDeadline, adopt_orphans, kill_descendants
from orchestrator.serving.ray_access import RayAccessError
from orchestrator.serving.slice_claims import offer_of_plan

if TYPE_CHECKING:
    from orchestrator.frontdoor.server import FrontDoorServer

LOST_NOTICE_S = 5.0
STOP_GRACE_S = 15.0  # a start-up interrupted stops its own way within this, else is ended


def _load(config_path: Path, port: int | None = None) -> LoadedConfig:
    try:
        return steps.load(config_path, port)
    except ConfigError as error:
        raise fail(error.message, 2) from None


def _plan_here(loaded: LoadedConfig) -> Plan:
    try:
        placement, gpu_note = steps.plan_here(loaded)
    except (ConfigError, PlanError) as error:
        raise fail(error.message, 2) from None
    print_plan(loaded, placement, gpu_note)
    return placement


def _plan_on_cluster(loaded: LoadedConfig) -> Plan:
    cluster = steps.plan_on_cluster(loaded)  # PlanError: the caller knows what it joined and must leave
    for message in cluster.warnings:
        warn(message)
    for line in cluster.node_lines:
        console.print(line)
    print_plan(loaded, cluster.plan, None)
    return cluster.plan


def plan_command(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Validate the config against the hardware and print the placement; starts nothing.

    With ``ray.address`` the cluster is joined (a driver that deploys nothing), every node probed and the config
    planned over all of them, exactly as ``up`` will; otherwise this machine is probed.
    """
    loaded = _load(config)
    if not loaded.config.ray.address:
        _plan_here(loaded)
        return
    from orchestrator.serving import deploy

    try:
        with console.status(f"Joining the Ray cluster at {loaded.config.ray.address} to probe its nodes..."):
            for message in deploy.connect_ray(loaded):
                warn(message)
        _plan_on_cluster(loaded)
    except (PlanError, RayAccessError) as error:
        raise fail(error.message, 2) from None
    finally:
        deploy.disconnect_ray()


def _export_if_needed(config_path: Path, loaded: LoadedConfig, placement: Plan) -> None:
    if not steps.onnx_export_needed(loaded, placement):
        return
    try:
        with console.status(f"Exporting {loaded.model_name} to ONNX (first start only; about 10-20 s on 2 cores)..."):
            console.print(steps.export_in_child(config_path))
    except OrchestratorError as error:
        raise fail(error.message, 1) from None


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
    # A Ctrl-C during start-up stops it within STOP_GRACE_S even when Ray holds the main thread in a C call.
    deadline = SignalDeadline(
        STOP_GRACE_S,
        on_expiry=lambda _: console.print(
            f"Stopped. (Ray did not let go within {STOP_GRACE_S:.0f} s: its processes were ended.)"
        ),
    )
    try:
        started = time.monotonic()
        front, loaded, placement = _start(config, port, timeout_s)
    except KeyboardInterrupt:  # before anything was started (planning, the ONNX export): nothing to stop
        console.print("Interrupted: nothing was started.")
        raise typer.Exit(130) from None
    finally:
        deadline.disarm()
    from orchestrator.serving import deploy

    # Watched from before Ready is printed: a /health right after it already says how Ray's control plane is.
    stop = threading.Event()
    watch = ControlPlaneWatch(deploy.control_plane_problem, on_lost=lambda _: stop.set())
    front.front_door.watch_control_plane(lambda: watch.lost)
    watch.start()
    server = loaded.config.server
    processes = "" if front.workers is None else f", {len(front.workers.pids()) + 1} front-door processes"
    console.print(
        f"[green]Ready[/green] in {time.monotonic() - started:.1f} s: {len(placement.instances)} instance(s)"
        + processes
    )
    url = f"http://{server.host}:{server.port}"
    routes = (
        "POST /v1/rerank, POST /rerank, GET /v1/models, GET /health"
        if loaded.config.model.task == "rerank"
        else "POST /v1/embeddings, POST /embed, GET /v1/models, GET /health"
    )
    served = loaded.served()
    if len(served) > 1:  # requests name their model; the default one answers those that do not
        names = ", ".join(f"{m.name} ({m.task})" for m in served)
        console.print(f"Serving {names} at {url}; without a model field: {loaded.model_name}  ({routes})")
    else:
        console.print(f"Serving {loaded.model_name} at {url}  ({routes})")
    console.print(f"Dashboard: {url}/dashboard   Prometheus metrics: {url}/metrics   Instances: orchestrator status")
    search = search_settings(loaded)  # validated by steps.load: cannot fail here
    if search is not None:
        where = getattr(search.store, "path", None) or f"pgvector table {search.store.table}"
        console.print(f"Search: POST {url}/v1/search over {where}")
    _warn_if_no_model(served)
    console.print("Press Ctrl-C to stop.")
    entry = running.record(url, config)  # `orchestrator status` finds this service without a config
    try:
        _serve_until_stopped(front, watch, stop)
    finally:
        running.forget(entry)


def _start(config: Path, port: int | None, timeout_s: float) -> tuple[FrontDoorServer, LoadedConfig, Plan]:
    """Everything up to Ready; a failure or a Ctrl-C on the way stops what was started and exits (1, 2 or 130)."""
    loaded = _load(config, port)
    placement: Plan | None = None  # with ray.address: planned once, over the cluster, after joining it
    if not loaded.config.ray.address:
        placement = _plan_here(loaded)
        _export_if_needed(config, loaded, placement)
    adopt_orphans()  # Ray's agents outlive a dead raylet: re-parented here, they are ended with us
    try:
        front = steps.open_front_door(loaded)
    except OrchestratorError as error:
        raise fail(error.message, 1) from None
    from orchestrator.serving import deploy

    try:
        with console.status("Starting Ray...") as status:
            # An embedded Ray offers what this machine's plan claims (its MIG slices and GPUs; slice_claims.py).
            offer = offer_of_plan(placement.instances) if placement is not None else None
            for message in deploy.start_ray(loaded, offer=offer):
                warn(message)
            if placement is None:
                status.update("Probing every node of the cluster...")
                placement = _plan_on_cluster(loaded)

            def progress(ready: int, total: int) -> None:
                status.update(f"Loading {loaded.model_name}: {ready}/{total} instances ready...")

            status.update(f"Loading {loaded.model_name} on {len(placement.instances)} instance(s)...")
            lane_token = deploy.deploy(loaded, placement, timeout_s=timeout_s, on_progress=progress)
            status.update("Connecting the front door to every instance...")
            server = loaded.config.server
            workers = front_door_workers(server.front_door_workers, placement, server.transport)
            if workers > 1:
                status.update(f"Connecting {workers} front-door processes to every instance...")
            deploy.attach_front_door(front, loaded, placement, lane_token, workers=workers)
    except (PlanError, RayAccessError) as error:  # the cluster cannot hold the config or be joined: nothing deployed
        _abort(front)
        raise fail(error.message, 2) from None
    except OrchestratorError as error:
        _abort(front)
        raise fail(f"{error.message} (run with --verbose to see the replicas' logs)", 1) from None
    except Exception as error:  # Ray's own failures arrive as long tracebacks: keep the last line
        _abort(front)
        last_line = (str(error).strip().splitlines() or [type(error).__name__])[-1]
        raise fail(f"starting the service failed: {last_line} (run with --verbose for details)", 1) from None
    except KeyboardInterrupt:
        with console.status("Interrupted: stopping what was started..."):
            _abort(front)
        console.print("Stopped.")
        raise typer.Exit(130) from None
    return front, loaded, placement


def _abort(front: FrontDoorServer) -> None:
    """Stop a start-up cut short, quickly (nothing was served: no drain); a further Ctrl-C ends at once."""

    def now(signum: int, _frame: object) -> None:
        kill_descendants()
        os._exit(128 + signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, now)
    steps.stop(front, drain=False)


def _warn_if_no_model(served: tuple[ServedModel, ...]) -> None:
    """Say it loudly when the replicas run no model (scripts/bench_ingress.py's marker folder)."""
    from workers.backends.null_backend import MARKER_FILE, is_ingress_bench_folder

    if any(is_ingress_bench_folder(model.folder) for model in served):
        console.print(
            f"[bold red]INGRESS BENCHMARK: the model folder carries {MARKER_FILE}: the replicas run NO model and "
            "answer placeholder vectors. Never serve this to clients.[/bold red]"
        )


def _serve_until_stopped(front: FrontDoorServer, watch: ControlPlaneWatch, stop: threading.Event) -> None:
    """Serve until a signal or the loss of Ray's control plane (``watch`` sets ``stop``), then drain and stop (exit
    1 on the loss)."""
    _stop_on_signals(stop)
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
            steps.stop(front)
        console.print("Stopped.")
    if watch.lost is not None:
        raise fail("stopped because Ray's control plane is gone: start it again with orchestrator up", 1)


def export_command(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Export the config's model to ONNX into the cache now (for images and slow disks); `up` then reuses it."""
    loaded = _load(config)
    try:
        placement, _ = steps.plan_here(loaded)
    except (ConfigError, PlanError) as error:
        raise fail(error.message, 2) from None
    if not any(instance.backend == "onnx" for instance in placement.instances):
        console.print("No instance uses the onnx backend here: nothing to export.")
        return
    from workers.backends.onnx_export import OnnxExportError, cached_graph

    model = loaded.config.model
    cache_dir = Path(model.onnx_cache_dir) if model.onnx_cache_dir else None
    try:
        with console.status(f"Exporting {loaded.model_name} to ONNX (about 10-20 s on 2 cores)..."):
            graph = cached_graph(loaded.model_folder, cache_dir, model.quantize)
    except OnnxExportError as error:
        raise fail(f"{error} (backend: torch serves without ONNX)", 1) from None
    if graph.exported_now:
        console.print(f"Exported in {graph.export_seconds:.1f} s: {graph.path}")
    else:
        console.print(f"Already cached (valid): {graph.path}")
