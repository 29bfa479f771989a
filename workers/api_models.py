"""Which models this endpoint serves, as a replica answers it: ``GET /v1/models`` and ``/v1/models/{id}`` (OpenAI's
shape, every served name and alias), and the check of a request's ``model`` field.

Every replica holds the endpoint's whole catalogue (``ReplicaSpec.catalogue``), so whichever replica the front door
picks answers the list the same way, behind its own API-key check. A request reaches the replica of the model it
names (the front door routes by name); a name nobody answers to reaches the default model's replica, whose 404 lists
every served name.
"""

from __future__ import annotations

from typing import Any

from orchestrator.contracts.catalogue import ModelCatalogue
from orchestrator.contracts.errors import NotFound

# `created` is required by OpenAI's shape; 0 ("unknown") is the same on every replica, where a start time would differ
# from one answer to the next.
MODEL_CREATED = 0
MODEL_OWNER = "mig-orchestrator"


def model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": MODEL_CREATED, "owned_by": MODEL_OWNER}


def models_list(catalogue: ModelCatalogue) -> dict[str, Any]:
    """OpenAI's model list: one card per served name and alias (an alias is a model a client may name)."""
    return {"object": "list", "data": [model_card(name) for name in catalogue.served_names()]}


def retrieve(catalogue: ModelCatalogue, requested: str) -> dict[str, Any]:
    """The card of ``requested`` as the catalogue spells it; NotFound listing the served names otherwise."""
    entry = catalogue.find(requested)
    if entry is None:
        raise NotFound(catalogue.unknown(requested))
    spelled = next(name for name in entry.names() if name.lower() == requested.lower())
    return model_card(spelled)


def check_model(catalogue: ModelCatalogue, served: str, requested: str | None) -> None:
    """Accept a request naming this replica's model (by name or alias, any case) or naming none; NotFound otherwise
    (the served names listed, or which model this instance serves when another model of the endpoint was named)."""
    if requested is None:
        return
    entry = catalogue.find(requested)
    if entry is None:
        raise NotFound(catalogue.unknown(requested))
    if entry.name != served:
        raise NotFound(f"model {requested!r} is served by other instances of this endpoint; this one serves {served!r}")
