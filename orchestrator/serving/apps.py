"""How the plan maps onto Serve applications, and the catalogue of served models: names shared by deploying and by
the front door's transports.

One Serve application (one deployment, ``DEPLOYMENT_NAME``) per node, and per model when the plan serves several.
"""

from __future__ import annotations

import re

from orchestrator.config import LoadedConfig
from orchestrator.contracts.catalogue import ModelCatalogue, ModelEntry
from orchestrator.contracts.plan import Plan, PlannedInstance, instances_by_node_and_model

APP_NAME = "embeddings"
DEPLOYMENT_NAME = "EmbeddingReplica"


def app_name_for(node_id: str | None, node_ip: str | None, model: str | None = None) -> str:
    """The Serve application of one node's replicas: ``embeddings`` on a single machine, one per node in a cluster;
    with several models, one per node and model (``model``: its served name, None for a one-model plan)."""
    suffix = "" if model is None else "-" + re.sub(r"[^A-Za-z0-9_.-]", "_", model)
    if node_id is None:
        return APP_NAME + suffix
    return f"{APP_NAME}-{node_ip or node_id[:8]}-{node_id[:8]}{suffix}"


def catalogue_of(loaded: LoadedConfig) -> ModelCatalogue:
    """Every served model of the config: names, aliases and tasks (the default model first)."""
    return ModelCatalogue(tuple(ModelEntry(m.name, m.aliases, m.task) for m in loaded.served()))


def deployment_groups(plan: Plan) -> dict[tuple[str | None, str | None], tuple[PlannedInstance, ...]]:
    """One Serve application per (node, model): the model is None when the plan serves one model, so a one-model
    service keeps its one application per node, named as before."""
    several = len(plan.models()) > 1
    return {
        (node_id, model if several else None): group
        for (node_id, model), group in instances_by_node_and_model(plan).items()
    }
