"""How the plan maps onto Serve applications, and the catalogue of served models: names shared by deploying and by
the front door's transports.

One Serve application (one deployment, ``DEPLOYMENT_NAME``) per node, per model when the plan serves several, and
per device claim (a MIG profile, whole GPUs: ``slice_claims``) when it places replicas on GPUs: Serve gives every
replica of a deployment the same Ray resources.
"""

from __future__ import annotations

import re

from orchestrator.config import LoadedConfig
from orchestrator.contracts.catalogue import ModelCatalogue, ModelEntry
from orchestrator.contracts.plan import Plan, PlannedInstance, instances_by_node_and_model
from orchestrator.serving.slice_claims import claim_of

NODE_ID_LABEL = "ray.io/node-id"  # every Ray node carries its id as this label: what pins an actor to a node
APP_NAME = "embeddings"
DEPLOYMENT_NAME = "EmbeddingReplica"


def app_name_for(node_id: str | None, node_ip: str | None, model: str | None = None, claim: str | None = None) -> str:
    """The Serve application of one node's replicas: ``embeddings`` on a single machine, one per node in a cluster;
    with several models, one per node and model (``model``: its served name, None for a one-model plan); replicas on
    GPUs add their claim's key (``embeddings-1g.10gb``, ``embeddings-gpu``)."""
    suffix = "".join("-" + re.sub(r"[^A-Za-z0-9_.-]", "_", part) for part in (model, claim) if part is not None)
    if node_id is None:
        return APP_NAME + suffix
    return f"{APP_NAME}-{node_ip or node_id[:8]}-{node_id[:8]}{suffix}"


def catalogue_of(loaded: LoadedConfig) -> ModelCatalogue:
    """Every served model of the config: names, aliases and tasks (the default model first)."""
    return ModelCatalogue(tuple(ModelEntry(m.name, m.aliases, m.task) for m in loaded.served()))


DeploymentKey = tuple[str | None, str | None, str | None]  # (node, model, claim key)


def deployment_groups(plan: Plan) -> dict[DeploymentKey, tuple[PlannedInstance, ...]]:
    """One Serve application per (node, model, claim): the model is None when the plan serves one model, the claim
    None for CPU pools, so a one-model service on CPU keeps its one application per node, named as before. Each
    group is in rank order: the replica of rank r in its deployment serves the group's r-th instance."""
    several = len(plan.models()) > 1
    groups: dict[DeploymentKey, list[PlannedInstance]] = {}
    for (node_id, model), instances in instances_by_node_and_model(plan).items():
        for instance in instances:
            groups.setdefault((node_id, model if several else None, claim_of(instance).key), []).append(instance)
    return {key: tuple(group) for key, group in groups.items()}


def app_name_of(key: DeploymentKey, instances: tuple[PlannedInstance, ...]) -> str:
    """The application name of one deployment group."""
    node_id, model, claim = key
    return app_name_for(node_id, instances[0].node_ip, model, claim)
