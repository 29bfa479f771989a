"""The steps ``up``, ``plan`` and ``export`` are made of, each a plain call that prints nothing and raises an
``OrchestratorError`` whose message is the one line a user needs.

``up`` is: load config -> probe hardware and plan (this machine, or every node once the cluster is joined) -> export
the ONNX graph if the cache lacks it -> bind the port (with ``POST /v1/search`` mounted when the config has a
``search:`` section) -> start Ray -> deploy -> attach the transport -> serve -> stop. The CLI
(``orchestrator/cli/serve.py``) strings these together, shows progress and maps errors to exit codes; keeping the
steps free of output is what lets ``plan`` run exactly the planning ``up`` runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator import capabilities
from orchestrator.config import LoadedConfig, load_config
from orchestrator.contracts.errors import DeployError
from orchestrator.contracts.plan import Plan
from orchestrator.contracts.replica_spec import ReplicaSpec
from orchestrator.doctor import ServingFacts
from orchestrator.hardware.probe import probe_topology
from orchestrator.planning.planner import plan
from orchestrator.search_route import mount_search, search_settings
from orchestrator.serving.control_plane import kill_descendants

if TYPE_CHECKING:
    from orchestrator.frontdoor.server import FrontDoorServer


@dataclass(frozen=True)
class ClusterPlan:
    """A plan over every node of a joined cluster, with what the probe found on the way (to print)."""

    plan: Plan
    node_lines: tuple[str, ...]
    warnings: tuple[str, ...]


def load(config_path: Path, port: int | None = None) -> LoadedConfig:
    """Read and validate the config (``port`` overrides ``server.port``), its ``search:`` section included (by the
    search layer, which must then be installed); raises ConfigError."""
    loaded = load_config(config_path)
    if port is not None:
        server = loaded.config.server.model_copy(update={"port": port})
        loaded = loaded.model_copy(update={"config": loaded.config.model_copy(update={"server": server})})
    search_settings(loaded)
    return loaded


def plan_here(loaded: LoadedConfig) -> tuple[Plan, str | None]:
    """The placement on this machine's hardware, with the probe's note about GPUs (None when there is nothing to
    say). A config with ``ray.address`` is planned over the cluster instead, once joined: ``plan_on_cluster``."""
    topology = probe_topology()
    return plan(loaded.config, topology, loaded.footprints(), capabilities.detect()), topology.gpu_note


def plan_on_cluster(loaded: LoadedConfig) -> ClusterPlan:
    """Probe every node of the joined cluster (one Ray task each; each also says whether the model folder exists
    there) and plan over all of them; raises PlanError."""
    from orchestrator.hardware.cluster_probe import describe_node, discover_nodes, node_names
    from orchestrator.planning.cluster_planner import plan_cluster

    nodes, warnings = discover_nodes(model_folder=str(loaded.model_folder))
    names = node_names(nodes)
    lines = tuple(describe_node(node, names[node.node_id]) for node in nodes)
    placement = plan_cluster(loaded.config, nodes, loaded.footprints(), capabilities.detect())
    return ClusterPlan(placement, lines, tuple(warnings))


def replica_spec_here(loaded: LoadedConfig, placement: Plan) -> ReplicaSpec:
    """What a replica of this machine's default model would receive (no lane, no API key): for the checks and
    measurements that build an instance outside Serve (``doctor --gpu``, ``bench --profile``)."""
    return ReplicaSpec.from_config(
        placement,
        None,
        {"model": loaded.config.model, "server": loaded.config.server},
        model_folder=str(loaded.model_folder),
        model_name=loaded.model_name,
        api_key_sha256=None,
        lane_token=None,
    )


def onnx_export_needed(loaded: LoadedConfig, placement: Plan) -> bool:
    """True when this machine's replicas need an ONNX graph the cache does not hold (valid) yet.

    Exporting before Ray starts turns a cache that cannot work (a file in its place, a read-only or full disk) into a
    one-line failure with the fix, instead of Serve's "Failed to update the deployments" after every replica tried
    six times. On a cluster each node fills its own cache and a replica reports a failure with its reason.
    """
    if loaded.config.ray.address or not any(instance.backend == "onnx" for instance in placement.instances):
        return False
    from workers.backends.onnx_export import cache_key, default_cache_dir, entry_is_valid

    model = loaded.config.model
    root = Path(model.onnx_cache_dir) if model.onnx_cache_dir else default_cache_dir()
    return not entry_is_valid(root / cache_key(loaded.model_folder, model.quantize))


def export_in_child(config_path: Path) -> str:
    """Run ``orchestrator export`` in a child process (torch and the model never stay in this process's memory);
    returns its last line, raises DeployError with the export's own one-line reason."""
    command = [sys.executable, "-m", "orchestrator.cli", "export", "--config", str(config_path)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "500"})
    if done.returncode != 0:
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        reason = next((line for line in reversed(lines) if line.startswith("error: ")), lines[-1] if lines else "")
        raise DeployError(reason.removeprefix("error: ") or f"the ONNX export failed (exit code {done.returncode})")
    return (done.stdout.strip().splitlines() or [""])[-1]


def serving_facts(loaded: LoadedConfig, placement: Plan) -> ServingFacts:
    """Look, without starting anything, at what ``up`` needs on this machine besides the GPUs."""
    from workers.backends.onnx_export import (
        OnnxExportError,
        cache_key,
        check_cache_dir,
        default_cache_dir,
        entry_is_valid,
        export_space_needed,
    )

    model = loaded.config.model
    root = Path(model.onnx_cache_dir) if model.onnx_cache_dir else default_cache_dir()
    onnx_needed = any(instance.backend == "onnx" for instance in placement.instances)
    cache_problem, cache_detail = None, "no instance here uses the onnx backend"
    if onnx_needed:
        if entry_is_valid(root / cache_key(loaded.model_folder, model.quantize)):
            cache_detail = f"the graph of {loaded.model_name} is cached in {root}"
        else:
            try:
                check_cache_dir(root, export_space_needed(loaded.model_folder))
                cache_detail = f"{root} is writable: the first up exports {loaded.model_name} there (about 15-25 s)"
            except OnnxExportError as error:
                cache_problem = str(error)
    return ServingFacts(
        onnx_needed=onnx_needed,
        onnx_installed=capabilities.detect().onnx,
        cache_problem=cache_problem,
        cache_detail=cache_detail,
        address=f"{loaded.config.server.host}:{loaded.config.server.port}",
        port_problem=_port_problem(loaded.config.server.host, loaded.config.server.port),
    )


def _port_problem(host: str, port: int) -> str | None:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT does not count
        try:
            probe.bind((host, port))
        except OSError as error:
            return f"{host}:{port} cannot be listened on ({error.strerror}): stop what holds it, or set server.port"
    return None


def open_front_door(loaded: LoadedConfig) -> FrontDoorServer:
    """Bind the port now, before Ray: a busy port fails in a second, and clients get 503 "starting" meanwhile.
    ``POST /v1/search`` is mounted first when the config has a ``search:`` section (``mount_search``)."""
    from orchestrator.frontdoor.server import front_door_server_for

    front = front_door_server_for(loaded)
    mount_search(front.front_door, loaded)
    front.start()
    return front


def stop(front: FrontDoorServer | None, drain: bool = True) -> None:
    """Stop taking requests and finish those in flight, then stop Serve and Ray, and end any process left.

    ``drain=False`` is for a start-up cut short (Ctrl-C, a failed deploy): nothing was served, so Serve's graceful
    shutdown is skipped where Ray ends with this process anyway.
    """
    from orchestrator.serving import deploy
    from orchestrator.serving.quiet_shutdown import quiet_serve_shutdown

    with quiet_serve_shutdown():
        try:
            if front is not None:
                front.stop()
        finally:
            try:
                deploy.shutdown(drain=drain)
            finally:
                kill_descendants()  # what Ray left (agents of a dead raylet, a worker stuck in a call)
