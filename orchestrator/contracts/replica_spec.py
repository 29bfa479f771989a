"""What each replica receives (pickled by Serve): the plan, and the config settings a replica reads.

A setting keeps its config name here and says which config section it comes from; ``ReplicaSpec.from_config`` fills
every such field from that section by name. A new model or server option reaches the replicas by being declared in
the config and once below, with no line copying it on the way.

With several models there is one spec per (node, model) deployment: its ``model`` section is that model's,
``serves_model`` picks the node's instances of that model, and ``catalogue`` lists every model of the endpoint (for
``/v1/models`` and the list an unknown name's 404 gives).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from orchestrator.contracts.catalogue import ModelCatalogue, ModelEntry
from orchestrator.contracts.errors import PlanError
from orchestrator.contracts.plan import Plan, PlannedInstance


def _from(section: str, **default: Any) -> Any:
    """A field read from the config section ``section`` (``model`` or ``server``) under the field's own name."""
    return dataclasses.field(metadata={"section": section}, **default)


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything a replica needs, decided by the planner and the config."""

    plan: Plan
    node_id: str | None  # the node whose instances this deployment serves (None: the only machine)
    model_folder: str
    model_name: str
    pooling: str = _from("model")
    dtype: str = _from("model")
    attn_implementation: str = _from("model")
    padding_side: str = _from("model")
    prompts: dict[str, str] = _from("model")
    default_prompt_name: str | None = _from("model")
    quantize: str = _from("model")
    onnx_cache_dir: str | None = _from("model")
    max_input_tokens: int | None = _from("model")
    normalize: bool = _from("model")
    max_inputs_per_request: int = _from("server")
    max_request_bytes: int = _from("server")
    api_key_sha256: str | None = None
    open_endpoints: tuple[str, ...] = _from("server", default=("health", "metrics"))
    request_timeout_s: float | None = _from("server", default=60.0)
    lane_token: str | None = None  # set: open a direct lane for the front door (transport "direct")
    # Last, with the config's defaults: specs built positionally (tests) stay valid.
    accept_token_ids: bool = _from("server", default=False)
    auto_truncate: bool = _from("server", default=True)
    task: str = _from("model", default="embed")  # "rerank": a cross-encoder on /rerank and /v1/rerank
    aliases: tuple[str, ...] = ()  # other names this model answers to
    serves_model: str | None = None  # the model of this deployment's instances (None: every instance of the node)
    catalogue: ModelCatalogue | None = None  # every model behind the endpoint (None: this one only)
    # The plan ranks of the deployment's instances, in the order of its replicas (one deployment per node, model and
    # device claim); empty: every instance of the node (and of ``serves_model``), as a spec built outside Serve has.
    instance_ranks: tuple[int, ...] = ()

    def instance_for_rank(self, rank: int) -> PlannedInstance:
        """The instance the replica of ``rank`` in this deployment serves; raises PlanError for an unknown rank."""
        if not self.instance_ranks:
            return self.plan.instance_for_node_rank(self.node_id, rank, self.serves_model)
        if not 0 <= rank < len(self.instance_ranks):
            raise PlanError(f"replica rank {rank} has no planned instance (its deployment has {self.instance_ranks})")
        return self.plan.instance_for_rank(self.instance_ranks[rank])

    def models(self) -> ModelCatalogue:
        """The endpoint's models: the catalogue, or this model alone."""
        if self.catalogue is not None:
            return self.catalogue
        return ModelCatalogue((ModelEntry(self.model_name, self.aliases, self.task),))

    @classmethod
    def from_config(
        cls,
        plan: Plan,
        node_id: str | None,
        sections: dict[str, Any],
        *,
        model_folder: str,
        model_name: str,
        api_key_sha256: str | None,
        lane_token: str | None,
        serves_model: str | None = None,
        catalogue: ModelCatalogue | None = None,
        instance_ranks: tuple[int, ...] = (),
    ) -> ReplicaSpec:
        """The spec of ``node_id``'s replicas (of ``serves_model``'s deployment, with several models); ``sections``
        maps ``model`` (that model's) and ``server`` to the config's sections."""
        settings = {}
        for field in dataclasses.fields(cls):
            section = field.metadata.get("section")
            if section is not None:
                value = getattr(sections[section], field.name)
                # Plain containers: the config's may be pydantic-owned; the spec is pickled to every replica.
                settings[field.name] = dict(value) if isinstance(value, dict) else value
        settings["open_endpoints"] = tuple(settings["open_endpoints"])
        aliases = tuple(getattr(sections["model"], "aliases", ()) or ())
        return cls(
            plan=plan,
            node_id=node_id,
            model_folder=model_folder,
            model_name=model_name,
            api_key_sha256=api_key_sha256,
            lane_token=lane_token,
            aliases=aliases,
            serves_model=serves_model,
            catalogue=catalogue,
            instance_ranks=instance_ranks,
            **settings,
        )
