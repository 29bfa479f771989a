"""The front door's transport for a deployed plan: direct lanes or Serve handles, one per model when there are
several (``orchestrator/frontdoor/model_routing.py`` routes between them)."""

from __future__ import annotations

from orchestrator.balancer import Weights
from orchestrator.contracts.catalogue import ModelCatalogue, ModelEntry
from orchestrator.contracts.errors import DeployError
from orchestrator.contracts.forwarding import NodeTransport, Transport
from orchestrator.contracts.plan import Plan
from orchestrator.frontdoor.lanes import Discover
from orchestrator.serving.apps import DEPLOYMENT_NAME, app_name_of, deployment_groups


def open_forwarder(
    plan: Plan,
    lane_token: str | None = None,
    weights: Weights = Weights(),
    catalogue: ModelCatalogue | None = None,
    discover: Discover | None = None,
    prefer: frozenset[str] = frozenset(),
) -> Transport:
    """The front door's forwarder, per ``server.transport``, and per model when the plan serves several
    (``orchestrator/frontdoor/model_routing.py``: each model its own transport over its own instances).

    ``direct`` (with a lane token): one lane per replica anywhere in the cluster, our balancer (``weights``) in the
    front door.
    ``serve``: Serve handles to this machine's replicas, or spread over one handle per node; routing inside a node
    is our balancer (the deployment's router); across nodes the front door sends each request to the node with the
    least outstanding work per unit of capacity (``NodeSpreadForwarder``).

    ``discover`` reads the lanes' registry (default: the metrics hub, through Ray); a front-door worker process
    passes what the ``up`` process forwards to it instead (``orchestrator/frontdoor/workers.py``). ``prefer``: the
    instances on this front door's own node, chosen first when no busier (direct lanes).
    """
    from orchestrator.frontdoor.model_routing import open_router

    models = plan.models()
    if len(models) == 1:
        return _model_forwarder(plan, None, lane_token, weights, discover, prefer)
    if catalogue is None:
        catalogue = ModelCatalogue(tuple(ModelEntry(model) for model in models))
    forwarders = {model: _model_forwarder(plan, model, lane_token, weights, discover, prefer) for model in models}
    return open_router(catalogue, forwarders)


def _model_forwarder(
    plan: Plan,
    model: str | None,
    lane_token: str | None,
    weights: Weights,
    discover: Discover | None,
    prefer: frozenset[str] = frozenset(),
) -> Transport:
    """One model's transport (``model`` None: every instance of a one-model plan)."""
    from orchestrator.frontdoor.node_spread import NodeSpreadForwarder
    from orchestrator.frontdoor.serve_handles import ServeForwarder

    if lane_token is not None:
        return _direct_forwarder(plan, model, lane_token, weights, discover or hub_registry(), prefer)

    forwarders: list[tuple[NodeTransport, int]] = []
    for key, instances in deployment_groups(plan).items():
        if key[1] != model:
            continue
        name = app_name_of(key, instances)
        capacity = sum(instance.capacity for instance in instances)
        forwarders.append((ServeForwarder(name, DEPLOYMENT_NAME, len(instances)), capacity))
    if len(forwarders) == 1:
        return forwarders[0][0]
    return NodeSpreadForwarder(forwarders)


def _direct_forwarder(
    plan: Plan, model: str | None, lane_token: str, weights: Weights, discover: Discover, prefer: frozenset[str]
) -> Transport:
    from orchestrator.frontdoor.lanes import DirectForwarder

    return DirectForwarder(
        {instance.name: instance.capacity for instance in plan.instances if model is None or instance.model == model},
        lane_token,
        discover,
        weights,
        prefer=prefer,
    )


def hub_registry() -> Discover:
    """The lanes' registry as the metrics hub keeps it (replicas register there when they start)."""
    from orchestrator.frontdoor.lanes import LaneEndpoint
    from orchestrator.serving.metrics_hub import find_hub

    hub = find_hub()
    if hub is None:
        raise DeployError("the metrics hub (the lane registry) is not running: redeploy")

    async def registered_lanes() -> list[LaneEndpoint]:
        lanes = await hub.lanes.remote()
        return [LaneEndpoint(lane["instance"], lane["host"], int(lane["port"]), lane["incarnation"]) for lane in lanes]

    return registered_lanes
