"""Plan -> Ray Serve application; start Ray, deploy, wait until healthy, shut down.

An embedded Ray is started here without the dashboard, with a bounded object store, on loopback only and with Ray's
token authentication; ``ray.address`` joins an existing cluster with the cluster's token (``ray_access`` decides both
environments). This is also the one owner of Serve's shutdown: a transport's ``aclose`` closes only what it opened.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.config import LoadedConfig
from orchestrator.contracts.errors import DeployError, PlanError
from orchestrator.contracts.plan import Plan, PlannedInstance, instances_by_node
from orchestrator.contracts.replica_spec import ReplicaSpec
from orchestrator.serving.apps import (
    APP_NAME,
    DEPLOYMENT_NAME,
    NODE_ID_LABEL,
    app_name_for,
    app_name_of,
    catalogue_of,
    deployment_groups,
)
from orchestrator.serving.forwarders import hub_registry, open_forwarder
from orchestrator.serving.ray_access import cluster_access, embedded_access, refresh_ray_config
from orchestrator.serving.slice_claims import NodeOffer, claim_of, needed, shortfalls

# Re-exported: callers know these by deploy's name.
__all__ = ["APP_NAME", "DEPLOYMENT_NAME", "NODE_ID_LABEL", "app_name_for", "open_forwarder"]

if TYPE_CHECKING:
    from orchestrator.frontdoor.server import FrontDoorServer

logger = logging.getLogger(__name__)

ROUTER_CLASS = "orchestrator.serving.router:WeightedLoadRouter"
ESSENTIAL_RAY_PROCESSES = ("gcs_server", "raylet")  # without either, nothing can start or replace a replica
SHUTDOWN_TIMEOUT_S = 30.0
SERVE_ENV = {
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
}


_joined_cluster = False  # set by connect_ray: a joined cluster outlives us, an embedded Ray ends with us


@dataclass(frozen=True)
class ServeTuning:
    """Serve settings that tests shorten; the defaults suit a real service."""

    graceful_shutdown_wait_loop_s: float = 0.5
    graceful_shutdown_timeout_s: float = 10.0
    health_check_period_s: float = 5.0
    routing_stats_period_s: float = 0.5


def start_ray(loaded: LoadedConfig, num_cpus: int | None = None, offer: NodeOffer | None = None) -> tuple[str, ...]:
    """Start an embedded Ray (or join ``ray.address``) and Serve, without Serve's HTTP proxy (the front door serves).

    An embedded Ray offers ``offer`` (the GPUs and MIG slices its plan claims: ``slice_claims.offer_of_plan``).
    Returns warnings for the operator; raises RayAccessError when a cluster cannot be joined with a token.
    """
    warnings = connect_ray(loaded, num_cpus, offer)
    from ray import serve

    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # Serve's INFO lines would bury our table
    # No Serve proxy: our front door (orchestrator/frontdoor/app.py) is the HTTP endpoint and calls replicas itself.
    serve.start(proxy_location="Disabled", logging_config={"log_level": "WARNING"})
    return warnings


def disconnect_ray() -> None:
    """Leave the Ray this process joined or started (``plan`` on a cluster: nothing was deployed)."""
    import ray

    if ray.is_initialized():
        _within(SHUTDOWN_TIMEOUT_S, ray.shutdown, "Ray's shutdown")


def connect_ray(loaded: LoadedConfig, num_cpus: int | None = None, offer: NodeOffer | None = None) -> tuple[str, ...]:
    """Start an embedded Ray offering ``offer`` (None: what Ray detects) or join ``ray.address`` (no Serve); returns
    warnings for the operator and raises RayAccessError when a cluster cannot be joined with a token."""
    ray_config = loaded.config.ray
    secret_env = (loaded.config.server.api_key_env or "",)
    choose_access = cluster_access if ray_config.address else embedded_access
    access = choose_access(os.environ, secret_env)
    access.apply(os.environ)  # before Ray starts: its processes inherit this environment
    # The front door calls replicas through a handle: over gRPC, and with the handle's router on the caller's own
    # event loop, a call costs about half as much (measured: /health 9.5 -> 6 ms, one short sentence 21 -> 17 ms).
    # Serve's controller loop every 0.5 s instead of 0.1 s halves its CPU (6 -> 3-4% of a core under load, +5%
    # served throughput on 2 cores); it only reacts up to 0.4 s later (replica deaths are seen by the front door
    # first). Set before ray.init so that the controller and replicas started by this Ray inherit them.
    for name, value in SERVE_ENV.items():
        os.environ.setdefault(name, value)
    import ray

    global _joined_cluster
    _joined_cluster = bool(ray_config.address)
    if not ray.is_initialized():
        refresh_ray_config(loopback_only=not ray_config.address)
        if ray_config.address:
            ray.init(address=ray_config.address, logging_level=logging.WARNING)
        else:
            # Ray's own Prometheus metrics have no reader in an embedded Ray without dashboard (our /metrics carries
            # the service's); not collecting them saves ~0.5% of a 2-core machine under load (agent, GCS, raylet).
            os.environ.setdefault("RAY_enable_metrics_collection", "0")
            ray.init(
                num_cpus=num_cpus,
                **(offer.ray_init_kwargs() if offer is not None else {}),
                include_dashboard=False,
                object_store_memory=ray_config.object_store_memory_mb * 1024 * 1024,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
    return access.warnings


def actor_options(instances: Sequence[PlannedInstance], node_id: str | None = None) -> dict[str, object]:
    """Ray options of one deployment's replicas (its instances share a node, a model and a device claim).

    Replicas ask Ray for no CPU: CPU pools are pinned by affinity. A replica on a MIG slice claims its profile's
    resource and one on whole GPUs ``num_gpus`` (``slice_claims``), so nothing else booked on Ray can take them;
    which device it uses is still the plan's, set as CUDA_VISIBLE_DEVICES (its MIG or GPU UUID) in the replica
    itself, and Ray is told not to overwrite CUDA_VISIBLE_DEVICES with the GPU ids it assigned.
    """
    claims = {claim_of(instance) for instance in instances}
    if len(claims) != 1:
        raise ValueError(f"one deployment's instances must share one device claim, not {sorted(map(str, claims))}")
    claim = claims.pop()
    env_vars = dict(SERVE_ENV)  # replicas on other nodes do not inherit this driver's environment
    if claim.key is not None:
        env_vars["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"] = "1"
    options: dict[str, object] = {"num_cpus": 0, **claim.ray_options(), "runtime_env": {"env_vars": env_vars}}
    if node_id is not None:
        # Every Ray node carries its id as this label: the node's replicas can only start where its slices are.
        options["label_selector"] = {NODE_ID_LABEL: node_id}
    return options


def build_application(  # noqa: ANN201
    loaded: LoadedConfig,
    plan: Plan,
    instances: tuple[PlannedInstance, ...],
    tuning: ServeTuning = ServeTuning(),
    lane_token: str | None = None,
    model: str | None = None,
):
    """The Serve application of one deployment group (``deployment_groups``: the instances of one node, model and
    device claim), one replica per instance; ``model`` is the served name with several models (None: the plan's
    one). With ``lane_token`` each replica opens a direct lane (the front door balances), without it Serve handles
    route through our balancer (``orchestrator/serving/router.py``)."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from workers.replica import EmbeddingReplica

    config = loaded.config
    served = {m.name: m for m in loaded.served()}
    this = served[model] if model is not None else loaded.served()[0]
    node_id = instances[0].node_id
    spec = ReplicaSpec.from_config(
        plan,
        node_id,
        {"model": this.settings, "server": config.server},
        model_folder=str(this.folder),
        model_name=this.name,
        api_key_sha256=loaded.api_key_sha256,
        lane_token=lane_token,
        serves_model=model,
        catalogue=catalogue_of(loaded),
        instance_ranks=tuple(instance.rank for instance in instances),
    )
    # Serve's own per-replica cap stays above the replica's text queue, so overload is answered by the batcher
    # with 429 instead of waiting in the router.
    max_ongoing = max(max(i.max_queued_texts for i in instances), 16)
    routing: dict[str, Any] = {}
    if lane_token is None:
        # Only Serve handles route through our router; with direct lanes the front door balances itself.
        routing["request_router_config"] = RequestRouterConfig(
            request_router_class=ROUTER_CLASS,
            request_router_kwargs=config.balancer.weights()._asdict(),
            request_routing_stats_period_s=tuning.routing_stats_period_s,
        )
    deployment = serve.deployment(EmbeddingReplica).options(
        name=DEPLOYMENT_NAME,
        num_replicas=len(instances),
        max_ongoing_requests=max_ongoing,
        ray_actor_options=actor_options(instances, node_id),
        health_check_period_s=tuning.health_check_period_s,
        graceful_shutdown_wait_loop_s=tuning.graceful_shutdown_wait_loop_s,
        graceful_shutdown_timeout_s=tuning.graceful_shutdown_timeout_s,
        **routing,
    )
    return deployment.bind(spec)


def deploy(
    loaded: LoadedConfig,
    plan: Plan,
    tuning: ServeTuning = ServeTuning(),
    timeout_s: float = 300.0,
    on_progress: Callable[[int, int], None] | None = None,
) -> str | None:
    """Deploy the plan and wait until every replica is running; raises DeployError on failure or timeout.

    Returns the lane token the front door needs to reach the replicas' direct lanes (a secret made per deployment;
    None with ``server.transport: serve``).
    """
    from ray import serve

    from orchestrator.serving.metrics_hub import start_hub

    lane_token = secrets.token_urlsafe(24) if loaded.config.server.transport == "direct" else None
    groups = deployment_groups(plan)
    problems = claim_shortfalls(plan)
    if problems:  # the cluster cannot hold the plan now: a plan error (nothing deployed), not a failed deploy
        raise PlanError("; ".join(problems))
    start_hub()  # before the replicas, which look it up when they start
    for key, instances in groups.items():
        app = build_application(loaded, plan, instances, tuning, lane_token, key[1])
        name = app_name_of(key, instances)
        try:
            serve.run(app, name=name, route_prefix=None, blocking=False)
        except RuntimeError as error:  # Serve's "Failed to update the deployments": the reason is in its status
            raise DeployError(
                f"deployment {name} failed: {failure_reason(_status_message(name) or str(error))}"
            ) from None
    expected = {app_name_of(key, instances): len(instances) for key, instances in groups.items()}
    wait_until_running(expected, timeout_s, on_progress)
    return lane_token


def claim_shortfalls(plan: Plan) -> list[str]:
    """What Ray cannot give the plan's replicas (``slice_claims.shortfalls``), read before deploying: a claim Ray
    cannot meet would leave its replica pending until the deploy timeout, with no reason given."""
    import ray._private.state as ray_state

    wanted: dict[str, Counter[str]] = {}
    for node_id, instances in instances_by_node(plan).items():
        amounts = needed(instances)
        if amounts:
            wanted[_node_key(node_id)] = amounts
    if not wanted:
        return []
    names = {_node_key(i.node_id): i.node_ip or "this machine" for i in plan.instances}
    return shortfalls(wanted, ray_state.total_resources_per_node(), ray_state.available_resources_per_node(), names)


def _node_key(node_id: str | None) -> str:
    """Ray's id of a plan's node (None: the node this process runs on)."""
    if node_id is not None:
        return node_id
    import ray

    return ray.get_runtime_context().get_node_id()


def attach_front_door(
    front: FrontDoorServer,
    loaded: LoadedConfig,
    plan: Plan,
    lane_token: str | None,
    wait_s: float = 30.0,
    workers: int = 1,
) -> None:
    """Make the running front door forward to the deployed replicas; with direct lanes, return once every instance's
    lane is open (or after ``wait_s``: ``/health`` then shows the missing ones as degraded). With ``workers`` above
    1 (direct lanes only), start the other front-door processes once this one forwards; in a cluster with direct
    lanes, start a front door on every other node of the plan (``node_front_doors``)."""
    from orchestrator.frontdoor.workers import prepare_workers
    from orchestrator.serving.node_front_doors import open_node_front_doors, stop_node_front_doors

    pool = None
    discover = None
    if workers > 1 and lane_token is not None:
        pool = prepare_workers(front, loaded, plan, lane_token, workers, wait_s)
        discover = pool.publishing(hub_registry())  # the workers learn the registry as this process reads it
    # In a cluster the head's front door, like every node's, takes its own node's instances first on a tie.
    node = _node_key(None) if _clustered(plan) else None
    here = frozenset(i.name for i in plan.instances if node is not None and i.node_id == node)
    weights = loaded.config.balancer.weights()
    forwarder = open_forwarder(plan, lane_token, weights, catalogue_of(loaded), discover, prefer=here)
    node_doors: list[Any] = []

    async def close() -> None:
        # On the front door's loop, once it takes no more requests: the other nodes' front doors drain, the
        # transport closes what it opened (lanes, watchers), then Serve's replicas stop, nothing being in flight.
        # The one place Serve is shut down from the front door (``shutdown`` is the other, for what was never
        # attached).
        await stop_node_front_doors(node_doors)
        await forwarder.aclose()
        await shutdown_serve_async()

    front.front_door.attach(forwarder, forwarder.readiness, close)
    front.run_on_loop(forwarder.start(wait_s), timeout_s=wait_s + 5.0)
    if pool is not None:
        front.workers = pool
        pool.start(workers)
    node_doors.extend(open_node_front_doors(loaded, plan, lane_token, wait_s))


def _clustered(plan: Plan) -> bool:
    return any(instance.node_id is not None for instance in plan.instances)


def wait_until_running(
    expected: dict[str, int], timeout_s: float, on_progress: Callable[[int, int], None] | None = None
) -> None:
    """Poll Serve until every application runs its expected replicas (application name -> count); raise
    DeployError with Serve's message if one fails."""
    from ray import serve
    from ray.serve._private.common import ReplicaState

    deadline = time.monotonic() + timeout_s
    total = sum(expected.values())
    while True:
        applications = serve.status().applications
        running = 0
        all_running = True
        for name, count in expected.items():
            status = applications.get(name)
            deployment = status.deployments.get(DEPLOYMENT_NAME) if status else None
            ready = deployment.replica_states.get(ReplicaState.RUNNING, 0) if deployment else 0
            running += min(ready, count)
            all_running &= status is not None and status.status == "RUNNING" and ready >= count
            message = (deployment.message if deployment else "") or (status.message if status else "")
            if status is not None and status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise DeployError(f"deployment {name} failed: {failure_reason(message)}")
            if CONSTRUCTOR_FAILED in message:
                # A replica whose constructor raised fails the same way on each of Serve's retries (a cache that
                # cannot be written, a model that does not load): say why now instead of after every retry.
                raise DeployError(f"deployment {name} failed: {failure_reason(message)}")
        if on_progress is not None:
            on_progress(running, total)
        if all_running:
            return
        if time.monotonic() > deadline:
            raise DeployError(f"only {running} of {total} replicas ready after {timeout_s:.0f} s")
        time.sleep(0.25)


def control_plane_problem(timeout_s: float = 2.0) -> str | None:
    """None while Ray's control plane answers; else what is wrong, in a few words (``control_plane.Probe``).

    Looks at the Ray processes this process started (an embedded Ray: its GCS and raylet must be running) and
    makes one cheap GCS call with ``timeout_s``.
    """
    import ray
    from ray._private import worker

    if not ray.is_initialized():
        return "Ray is not running"
    node = worker._global_node
    if node is not None:
        dead = sorted({kind for kind, _ in node.dead_processes() if kind in ESSENTIAL_RAY_PROCESSES})
        if dead:
            return f"Ray's {' and '.join(dead)} exited"
    try:
        worker.global_worker.gcs_client.internal_kv_exists(b"orchestrator-probe", None, timeout=timeout_s)
    except Exception as error:  # Ray raises its RpcError and others: any failure means no answer
        return f"Ray's GCS does not answer ({type(error).__name__})"
    return None


CONSTRUCTOR_FAILED = "failed to start"  # Serve's status message once a replica's constructor raised


def _status_message(name: str) -> str:
    """Serve's status message of application ``name`` (its deployment's, which holds the replica's traceback)."""
    from ray import serve

    status = serve.status().applications.get(name)
    if status is None:
        return ""
    deployment = status.deployments.get(DEPLOYMENT_NAME)
    return (deployment.message if deployment else "") or status.message


EXCEPTION_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception|Exit)): (.+)$")


def failure_reason(message: str) -> str:
    """The line of Serve's failure message that says why: the last exception raised in the replica (its traceback
    is in the message, under Serve's own summary such as "Failed to update the deployments"), else the last line."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        found = EXCEPTION_LINE.match(line)
        if found:
            return f"{found.group(1)}: {found.group(2).strip()}"
    return lines[-1].strip() if lines else "no reason given"


def shutdown(timeout_s: float = SHUTDOWN_TIMEOUT_S, drain: bool = True) -> None:
    """Stop Serve (draining in-flight requests) and Ray, each within ``timeout_s``: with the control plane gone,
    Serve is not asked (it would wait for its dead controller) and Ray's processes are stopped directly.

    ``drain=False`` (a start-up interrupted: nothing is being served) skips Serve's graceful shutdown on an embedded
    Ray, whose processes all end with it anyway; on a joined cluster Serve is still asked to remove what was deployed.
    """
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    if (drain or _joined_cluster) and control_plane_problem(timeout_s=1.0) is None:
        _within(timeout_s, serve.shutdown, "Serve's shutdown")
    _within(timeout_s, ray.shutdown, "Ray's shutdown")


async def shutdown_serve_async(timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
    """``serve.shutdown_async`` within ``timeout_s``, skipped when the control plane is gone (the front door's
    on-close step)."""
    from ray import serve

    if control_plane_problem(timeout_s=1.0) is not None:
        return
    try:
        await asyncio.wait_for(serve.shutdown_async(), timeout_s)
    except TimeoutError:
        logger.warning("Serve did not stop within %.0f s; stopping Ray's processes instead", timeout_s)


def _within(timeout_s: float, step: Callable[[], object], name: str) -> None:
    """Run ``step`` on a thread and wait at most ``timeout_s`` for it (a hung Ray call must not hang ``up``)."""
    done = threading.Thread(target=step, name=name, daemon=True)
    done.start()
    done.join(timeout_s)
    if done.is_alive():
        logger.warning("%s did not finish within %.0f s; going on", name, timeout_s)
