"""A front door on every other node of a cluster: the same endpoint served on each node, routing to every instance.

With one front door, every request of a cluster crosses the head. Here ``up`` starts one ``NodeFrontDoor`` actor per
other node of the plan, held there by Ray's node-id label: it listens on ``server.node_port`` (default
``server.port``) of that node, opens its own direct lane to every replica (reading the lanes' registry from the
metrics hub, as the head does) and balances over all of them, its own node's instances first when they are no
busier (``DirectForwarder``'s ``prefer``). A load balancer or a Kubernetes Service can then spread clients over the
nodes. Each actor is restarted by Ray if its process dies (it binds the port again); ``up`` stops them, draining,
before Serve stops, and they end with ``up`` in any case (their owner).

Counters are per node: Prometheus scrapes each node's ``/metrics`` (the instances' series are the same everywhere,
from the hub; ``orchestrator_front_door_*`` are that node's own).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import ray

from orchestrator.config import LoadedConfig
from orchestrator.contracts.errors import DeployError, PortBusy
from orchestrator.contracts.plan import Plan
from orchestrator.serving.apps import NODE_ID_LABEL, catalogue_of

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0


class NodeFrontDoor:
    """One node's front door (a Ray actor pinned to the node)."""

    def __init__(self, loaded: LoadedConfig, plan: Plan, lane_token: str, node_id: str, wait_s: float) -> None:
        from orchestrator.frontdoor.server import front_door_server_for
        from orchestrator.serving.forwarders import open_forwarder

        server = loaded.config.server
        port = server.node_port or server.port
        here = loaded.model_copy(
            update={"config": loaded.config.model_copy(update={"server": server.model_copy(update={"port": port})})}
        )
        self._front = front_door_server_for(here)
        try:
            self._front.start()
        except PortBusy:  # the actor fails to start and `up` says why, with this node's own fix
            fix = "set server.node_port to a port free on every node, or server.front_door_per_node: false"
            raise PortBusy(f"{server.host}:{port} is taken on that node: {fix}") from None
        local = frozenset(i.name for i in plan.instances if i.node_id == node_id)
        forwarder = open_forwarder(
            plan, lane_token, loaded.config.balancer.weights(), catalogue_of(loaded), prefer=local
        )
        self._front.front_door.attach(forwarder, forwarder.readiness, forwarder.aclose)
        self._front.run_on_loop(forwarder.start(wait_s), timeout_s=wait_s + 5.0)
        self.address = f"{server.host}:{port}"

    def where(self) -> str:
        """``host:port`` it serves on."""
        return self.address

    def stop(self) -> None:
        """Stop accepting and finish what is in flight (the replicas are still up)."""
        self._front.stop()


def open_node_front_doors(loaded: LoadedConfig, plan: Plan, lane_token: str | None, wait_s: float = 30.0) -> list[Any]:
    """Start a front door on every node of ``plan`` other than this process's (none for a one-machine plan, with
    ``transport: serve`` or with ``server.front_door_per_node: false``); returns their actor handles once each
    serves. Raises DeployError naming the node whose front door could not start."""
    server = loaded.config.server
    if lane_token is None or not server.front_door_per_node:
        return []
    here = ray.get_runtime_context().get_node_id()
    nodes = {i.node_id: i.node_ip for i in plan.instances if i.node_id is not None and i.node_id != here}
    if not nodes:
        return []
    actor = ray.remote(NodeFrontDoor)
    handles = {
        # Restarted where it was if its process dies (it binds the port again); no CPU asked, as for replicas.
        node_id: actor.options(num_cpus=0, max_restarts=-1, label_selector={NODE_ID_LABEL: node_id}).remote(
            loaded, plan, lane_token, node_id, wait_s
        )
        for node_id in nodes
    }
    for node_id, handle in handles.items():
        try:
            ray.get(handle.where.remote(), timeout=START_TIMEOUT_S + wait_s)
        except Exception as error:  # the actor's constructor failed (a busy port) or never started
            from orchestrator.serving.deploy import failure_reason

            for other in handles.values():
                ray.kill(other, no_restart=True)
            where = nodes[node_id] or node_id[:8]
            busy = re.search(r"PortBusy: (.+)", str(error))  # ours, inside Ray's traceback of the constructor
            reason = f"PortBusy: {busy.group(1).strip()}" if busy else failure_reason(str(error))
            raise DeployError(f"the front door on node {where} did not start: {reason}") from None
    return list(handles.values())


async def stop_node_front_doors(handles: list[Any], timeout_s: float = 30.0) -> None:
    """Drain every node's front door, then end the actors (before Serve's replicas stop)."""
    import asyncio

    if not handles:
        return
    try:
        await asyncio.wait_for(asyncio.gather(*(h.stop.remote() for h in handles), return_exceptions=True), timeout_s)
    except TimeoutError:
        logger.warning("the nodes' front doors did not stop within %.0f s", timeout_s)
    for handle in handles:
        ray.kill(handle, no_restart=True)
