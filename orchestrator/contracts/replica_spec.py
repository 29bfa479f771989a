"""What each replica receives (pickled by Serve): the plan, and the config settings a replica reads.

A setting keeps its config name here and says which config section it comes from; ``ReplicaSpec.from_config`` fills
every such field from that section by name. A new model or server option reaches the replicas by being declared in
the config and once below, with no line copying it on the way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from orchestrator.contracts.plan import Plan


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
    ) -> ReplicaSpec:
        """The spec of ``node_id``'s replicas; ``sections`` maps ``model`` and ``server`` to the config's sections."""
        settings = {}
        for field in dataclasses.fields(cls):
            section = field.metadata.get("section")
            if section is not None:
                value = getattr(sections[section], field.name)
                # Plain containers: the config's may be pydantic-owned; the spec is pickled to every replica.
                settings[field.name] = dict(value) if isinstance(value, dict) else value
        settings["open_endpoints"] = tuple(settings["open_endpoints"])
        return cls(
            plan=plan,
            node_id=node_id,
            model_folder=model_folder,
            model_name=model_name,
            api_key_sha256=api_key_sha256,
            lane_token=lane_token,
            **settings,
        )
