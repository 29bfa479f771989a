"""The YAML config: strict pydantic models and ``load_config``.

The seed's file (a bare ``mig_instances`` list) loads as written; everything else has a default. Validation is strict:
unknown keys, wrong types, duplicate instance names and model folders that do not exist are each reported as one line
naming the file and the key, before anything starts.

Models: ``model:`` is the one-model shorthand; ``models:`` lists several (each with a ``name``, optional ``aliases``),
and each instance names the model it serves (``model: <name or alias>``, default the first). ``Config.model`` is
always the default (first) model, ``Config.served_models()`` every one of them in order; an instance's model is
``Config.model_for(instance)``. Names and aliases are compared case-insensitively (as requests' ``model`` fields are)
and may not collide; every listed model needs an instance.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from orchestrator.balancer import Weights
from orchestrator.config_messages import validation_lines
from orchestrator.contracts.errors import ConfigError
from orchestrator.model_config import (
    ModelConfig,
    check_names_collide,
    lookup_model,
    unknown_model_line,
)
from orchestrator.model_source import ModelFootprint, ModelSourceError, measure_footprint, resolve_model_folder

CONFIG_VERSION = 1

PositiveInt = Annotated[int, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    max_request_bytes: PositiveInt = 4 * 1024 * 1024
    max_inputs_per_request: PositiveInt = 512
    max_header_bytes: PositiveInt = Field(
        32 * 1024, description="Request line plus headers, in bytes; more gets 431 before anything is forwarded."
    )
    client_timeout_s: Annotated[float, Field(gt=0)] = Field(
        15.0,
        description="A client must send its whole request line and headers within this, and its body must not stall "
        "longer (408 otherwise): slow or silent connections cannot hold the front door's sockets.",
    )
    max_connections: PositiveInt = Field(
        4096,
        description="Open client connections the front door keeps; more get 503 at once (and never exhaust its file "
        "descriptors: capped below the process's open-file limit).",
    )
    request_timeout_s: Annotated[float, Field(gt=0)] | None = Field(
        60.0, description="Deadline of one embedding request inside its instance (504 after it); null: none."
    )
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the API key; unset: no key is required."
    )
    open_endpoints: list[Literal["health", "metrics"]] = Field(
        default_factory=lambda: ["health", "metrics"],
        description="Endpoints answered without the key: health (/health) and metrics (/metrics, /instances, "
        "/dashboard).",
    )
    accept_token_ids: bool = Field(
        False,
        description="Read a list of integers in /v1/embeddings' input as token ids of this model's own tokenizer. Off "
        "(the default), such input gets 422: the ids clients send are another tokenizer's (LangChain's "
        "OpenAIEmbeddings sends tiktoken's unless check_embedding_ctx_length=False) and would silently embed other "
        "words.",
    )
    auto_truncate: bool = Field(
        True,
        description="Cut inputs over the model's limit when a request does not send 'truncate' (on /embed, and as an "
        "extension on /v1/embeddings): as sentence-transformers always does and TEI does by default since 1.9. "
        "false: such inputs get 422 unless the request sends truncate: true.",
    )
    transport: Literal["direct", "serve"] = Field(
        "direct",
        description="How the front door reaches replicas: 'direct' (one TCP lane per replica, our balancer in the "
        "front door; replicas on other nodes must accept TCP from the head on an ephemeral port) or 'serve' (Ray "
        "Serve's handle and our router in it: only Ray's ports, about 4 ms more per request).",
    )
    front_door_workers: Literal["auto"] | Annotated[int, Field(ge=1, le=64)] = Field(
        "auto",
        description="Front-door processes sharing the port, each with its own lanes and balancer (transport "
        "'direct' only). 'auto': one on CPU pools (the replicas use the cores), more on GPU nodes, sized from the "
        "planned instances and the cores (orchestrator/frontdoor/worker_count.py).",
    )

    front_door_per_node: bool = Field(
        True,
        description="In a cluster with direct lanes, serve the endpoint on every node of the plan too (a front door "
        "per node, routing to every instance, its own node's first on a tie), so a load balancer can spread clients "
        "over the nodes and the head is not on every request's path.",
    )
    node_port: Annotated[int, Field(ge=1, le=65535)] | None = Field(
        None, description="The port the other nodes' front doors listen on; null: server.port."
    )

    @field_validator("front_door_workers", mode="before")
    @classmethod
    def _auto_or_a_count(cls, value: object) -> object:
        # One line for a wrong value, instead of one per member of the union.
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)  # as pydantic reads "2" for an int
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 64):
            return value
        raise ValueError(f"'auto' or a number of processes from 1 to 64, not {value!r}")

    @model_validator(mode="after")
    def _workers_need_direct_lanes(self) -> ServerConfig:
        if self.front_door_workers != "auto" and self.front_door_workers > 1 and self.transport != "direct":
            raise ValueError(
                "front_door_workers above 1 needs transport: direct (each worker keeps its own lanes to the "
                "replicas; Serve handles live in the up process only)"
            )
        return self


BALANCER_PRESETS = {
    # docs/balancer-study.md: on unequal slices the stale load term costs p99 (1.36x at 0.7, 1.02x at 0.2 against
    # the best pair 0/1 at 80% load); 0.2 keeps the shared load signal for deployments with several routers.
    "measured": (0.2, 0.8),
    "seed": (0.7, 0.3),  # the seed document's LoadBalancer
}


class BalancerConfig(_Strict):
    """Weights of the seed's score: ``load_weight * load + queue_weight * queue`` (lowest wins).

    ``preset`` names a pair (``measured``: 0.2/0.8, the default; ``seed``: the seed's 0.7/0.3); explicit weights
    override it.
    """

    preset: Literal["measured", "seed"] = "measured"
    load_weight: Annotated[float, Field(ge=0)] | None = None
    queue_weight: Annotated[float, Field(ge=0)] | None = None

    def weights(self) -> Weights:
        """(load_weight, queue_weight) after applying the preset."""
        load, queue = BALANCER_PRESETS[self.preset]
        return Weights(
            self.load_weight if self.load_weight is not None else load,
            self.queue_weight if self.queue_weight is not None else queue,
        )

    @model_validator(mode="after")
    def _not_both_zero(self) -> BalancerConfig:
        if self.weights() == (0.0, 0.0):
            raise ValueError("load_weight and queue_weight cannot both be 0")
        return self


class CpuPoolsConfig(_Strict):
    """CPU pools used when no GPU is found: ``count`` pools of ``threads_per_pool`` cores each."""

    count: PositiveInt | Literal["auto"] = "auto"
    threads_per_pool: PositiveInt | Literal["auto"] = "auto"


class BatchingConfig(_Strict):
    """How each replica merges waiting requests into batches."""

    max_batch_tokens: PositiveInt = 16384
    max_wait_ms: Annotated[float, Field(ge=0, le=1000)] = 2.0
    max_queued_texts: PositiveInt = 2048
    batch_overhead_tokens: Annotated[float, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="Fixed cost of a forward pass in padded tokens; auto measures it at start-up."
    )


class RayConfig(_Strict):
    address: str | None = Field(None, description="Join this Ray cluster instead of starting an embedded one.")
    object_store_memory_mb: Annotated[int, Field(ge=64)] = 256


class InstanceConfig(_Strict):
    """One instance as the seed writes it: a MIG profile and per-instance batching limits.

    ``gpus`` > 1 is allowed only with ``type: gpu``: the instance then spans that many whole GPUs of one machine.
    """

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    type: Annotated[
        str,
        Field(
            pattern=r"^(\d+c\.)?\d+g\.\d+gb([+-][a-z.]+)?$|^cpu$|^gpu$|^auto$",
            description="A MIG profile (1g.5gb, 3g.40gb...), 'gpu' for a whole GPU without MIG, 'cpu', or 'auto': "
            "the smallest free MIG slice whose memory fits the instance's model (a CPU pool on a machine without GPU).",
        ),
    ] = "cpu"
    model: Annotated[str, Field(min_length=1)] | None = Field(
        None, description="The model this instance serves: a name or alias of models (default: the first model)."
    )
    model_path: str | None = None
    batch_size: PositiveInt = 32
    max_concurrency: PositiveInt = 1
    gpus: PositiveInt = Field(
        1, description="Whole GPUs one 'gpu' instance spans (its layers split over them by a balanced device map)."
    )

    @model_validator(mode="after")
    def _only_whole_gpus_span_devices(self) -> InstanceConfig:
        if self.gpus > 1 and self.type != "gpu":
            if self.type == "cpu":
                why = "a CPU pool grows by threads (cpu_pools.threads_per_pool), not by devices"
            else:  # CUDA enumerates a single MIG device per process
                why = "CUDA shows a process one MIG slice only"
            raise ValueError(
                f"gpus: {self.gpus} needs type: gpu (whole GPUs without MIG), not type: {self.type}: {why}"
            )
        return self


class Config(_Strict):
    version: Literal[1] = CONFIG_VERSION
    model: ModelConfig = ModelConfig()
    models: Annotated[list[ModelConfig], Field(min_length=1)] | None = Field(
        None, description="Several models behind the one endpoint; each instance names its model (default: the first)."
    )
    server: ServerConfig = ServerConfig()
    balancer: BalancerConfig = BalancerConfig()
    cpu_pools: CpuPoolsConfig = CpuPoolsConfig()
    batching: BatchingConfig = BatchingConfig()
    ray: RayConfig = RayConfig()
    search: dict[str, Any] | str | None = Field(
        None,
        description="Serve POST /v1/search on the service's port (the search extra): the search settings inline, or "
        "the path of a search settings file (relative: to this file). Kept raw here (the orchestrator does not "
        "import the search layer); `up` validates it with search.settings. url defaults to this service.",
    )
    mig_instances: Annotated[list[InstanceConfig], Field(min_length=1)]

    @field_validator("mig_instances")
    @classmethod
    def _unique_names(cls, instances: list[InstanceConfig]) -> list[InstanceConfig]:
        seen: set[str] = set()
        for instance in instances:
            if instance.name in seen:
                raise ValueError(f"duplicate instance name {instance.name!r}")
            seen.add(instance.name)
        return instances

    @field_validator("search", mode="before")
    @classmethod
    def _empty_search_is_on(cls, raw: Any) -> Any:
        # Runs only when the key is written: a bare `search:` (null) turns the route on with every default.
        if raw is None:
            return {}
        if isinstance(raw, dict) or (isinstance(raw, str) and raw.strip()):
            return raw
        raise ValueError("must be the search settings (a mapping) or the path of a search settings file")

    @model_validator(mode="before")
    @classmethod
    def _model_or_models(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "model" in raw and raw.get("models") is not None:
            raise ValueError("give either 'model' (one model) or 'models' (a list of models), not both")
        return raw

    @model_validator(mode="after")
    def _models_are_named_and_served(self) -> Config:
        if self.models is None:
            if self.model.names():
                check_names_collide([self.model], "model")
            for index, instance in enumerate(self.mig_instances):
                if instance.model is None:
                    continue
                if self.model.name is None:
                    raise ValueError(
                        f"mig_instances[{index}].model: names {instance.model!r} but the model section has no name: "
                        f"set model.name: {instance.model}"
                    )
                if lookup_model([self.model], instance.model) is None:
                    raise ValueError(unknown_model_line(index, instance.model, [self.model]))
            return self
        for index, entry in enumerate(self.models):
            if entry.name is None:
                raise ValueError(f"models[{index}].name: every model of a models list needs a name")
        check_names_collide(self.models, "models")
        served = set()
        for index, instance in enumerate(self.mig_instances):
            if instance.model_path is not None:
                raise ValueError(
                    f"mig_instances[{index}].model_path: with a models list an instance names its model "
                    "(model: <name>); give the folder as that model's path"
                )
            found = self.models[0] if instance.model is None else lookup_model(self.models, instance.model)
            if found is None:
                raise ValueError(unknown_model_line(index, str(instance.model), self.models))
            served.add(found.name)
        for index, entry in enumerate(self.models):
            if entry.name not in served:
                raise ValueError(
                    f"models[{index}] ({entry.name}): no instance serves it: add one with model: {entry.name}, "
                    "or remove the model"
                )
        # The default model is the first: what `model` means everywhere else (and what requests without one get).
        return self.model_copy(update={"model": self.models[0]})

    def served_models(self) -> list[ModelConfig]:
        """Every model, the default (first) one first."""
        return list(self.models) if self.models is not None else [self.model]

    def model_for(self, instance: InstanceConfig) -> ModelConfig:
        """The model ``instance`` serves (its ``model`` name or alias; the default model when it names none)."""
        if instance.model is None:
            return self.model
        found = lookup_model(self.served_models(), instance.model)
        return found if found is not None else self.model


class ServedModel(BaseModel):
    """One model of the config, resolved: its served name, aliases, settings and folder on disk."""

    model_config = ConfigDict(frozen=True)

    name: str
    settings: ModelConfig
    folder: Path
    footprint: ModelFootprint

    @property
    def aliases(self) -> tuple[str, ...]:
        return tuple(self.settings.aliases)

    @property
    def task(self) -> str:
        return self.settings.task


class LoadedConfig(BaseModel):
    """A validated config plus what was resolved from it: every model's folder on disk (``models``, the default
    model first); ``model_folder``, ``model_name`` and ``footprint`` are the default model's."""

    model_config = ConfigDict(frozen=True)

    source_path: str
    config: Config
    model_folder: Path
    model_name: str
    footprint: ModelFootprint
    api_key_sha256: str | None = None
    models: tuple[ServedModel, ...] = ()

    def served(self) -> tuple[ServedModel, ...]:
        """Every model (the default one first); a LoadedConfig built by hand without ``models`` has its default."""
        if self.models:
            return self.models
        settings = self.config.model.model_copy(update={"name": self.model_name})
        return (
            ServedModel(name=self.model_name, settings=settings, folder=self.model_folder, footprint=self.footprint),
        )

    def footprints(self) -> dict[str, ModelFootprint]:
        """Each model's footprint by its served name (what the planner sizes slices with)."""
        return {model.name: model.footprint for model in self.served()}


def parse_config(raw: object, source_path: str = "<config>") -> Config:
    """Validate parsed YAML; raise ConfigError whose message has one line per problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source_path}: the file must be a YAML mapping with a 'mig_instances' list")
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError("\n".join(validation_lines(source_path, error, raw, Config))) from None


def api_key_digest(config: Config, environ: Mapping[str, str], source_path: str = "<config>") -> str | None:
    """SHA-256 of the API key named by ``server.api_key_env`` (replicas get only this digest), or None.

    Raises ConfigError when the variable is named but unset or empty.
    """
    name = config.server.api_key_env
    if name is None:
        return None
    key = environ.get(name, "")
    if not key:
        raise ConfigError(
            f"{source_path}: server.api_key_env: environment variable {name} is unset or empty "
            f"(export {name}=... before starting, or remove api_key_env)"
        )
    return hashlib.sha256(key.encode()).hexdigest()


def load_config(path: str | os.PathLike[str]) -> LoadedConfig:
    """Read, validate and resolve a config file.

    Raises ConfigError (one line per problem, each naming the file and key) when the file is missing, is not YAML,
    breaks the schema, or names a model folder or package that does not exist.
    """
    source_path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source_path}: file not found (pass --config with an existing YAML file)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{source_path}: cannot read: {error}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{source_path}: not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    config = parse_config(raw, source_path)
    return resolve_config(config, source_path)


def resolve_config(config: Config, source_path: str = "<config>") -> LoadedConfig:
    """Resolve the model folder of every model (and of every instance's ``model_path`` in the one-model form, where
    all instances must serve the same folder). The returned config's models all carry their served name."""
    base_dir = Path(source_path).parent if source_path != "<config>" else Path.cwd()
    if config.models is not None:
        return _resolve_models(config, source_path, base_dir)
    problems: list[str] = []
    folders: dict[Path, str] = {}
    default_folder: Path | None = None
    # The default model matters only when named explicitly or when an instance has no model_path of its own.
    needs_default = "model" in config.model_fields_set or any(i.model_path is None for i in config.mig_instances)
    if needs_default:
        try:
            default_folder = resolve_model_folder(config.model.path, config.model.package, base_dir)
        except ModelSourceError as error:
            key = "model.path" if config.model.path is not None else "model.package"
            problems.append(f"{source_path}: {key}: {error}")
    for index, instance in enumerate(config.mig_instances):
        if instance.model_path is None:
            if default_folder is not None:
                folders.setdefault(default_folder, f"model ({instance.name})")
            continue
        try:
            folder = resolve_model_folder(instance.model_path, None, base_dir)
        except ModelSourceError as error:
            problems.append(f"{source_path}: mig_instances[{index}].model_path ({instance.name}): {error}")
            continue
        folders.setdefault(folder, instance.name)
    if problems:
        raise ConfigError("\n".join(problems))
    if len(folders) > 1:
        listed = ", ".join(f"{folder} ({who})" for folder, who in folders.items())
        raise ConfigError(
            f"{source_path}: mig_instances[].model_path: instances name different models ({listed}); "
            "one model section serves one folder: list each model under models: and name it on its instances"
        )
    folder = next(iter(folders)) if folders else default_folder
    assert folder is not None
    name = config.model.name or _default_model_name(config.model, folder)
    footprint = measure_footprint(folder)
    named = config.model.model_copy(update={"name": name})
    if any(alias.lower() == name.lower() for alias in named.aliases):
        raise ConfigError(f"{source_path}: model.aliases: {name!r} is the model's own name")
    return LoadedConfig(
        source_path=source_path,
        config=config,
        model_folder=folder,
        model_name=name,
        footprint=footprint,
        api_key_sha256=api_key_digest(config, os.environ, source_path),
        models=(ServedModel(name=name, settings=named, folder=folder, footprint=footprint),),
    )


def _resolve_models(config: Config, source_path: str, base_dir: Path) -> LoadedConfig:
    problems: list[str] = []
    served: list[ServedModel] = []
    for index, entry in enumerate(config.served_models()):
        try:
            folder = resolve_model_folder(entry.path, entry.package, base_dir)
        except ModelSourceError as error:
            key = "path" if entry.path is not None else "package"
            problems.append(f"{source_path}: models[{index}].{key} ({entry.name}): {error}")
            continue
        assert entry.name is not None  # required in a models list (Config's validator)
        served.append(ServedModel(name=entry.name, settings=entry, folder=folder, footprint=measure_footprint(folder)))
    if problems:
        raise ConfigError("\n".join(problems))
    default = served[0]
    return LoadedConfig(
        source_path=source_path,
        config=config,
        model_folder=default.folder,
        model_name=default.name,
        footprint=default.footprint,
        api_key_sha256=api_key_digest(config, os.environ, source_path),
        models=tuple(served),
    )


def _default_model_name(model: ModelConfig, folder: Path) -> str:
    # A package ships its model in a generic folder ("model"): the package name says more.
    if model.path is None and model.package is not None and folder.name == "model":
        return model.package
    return folder.name
