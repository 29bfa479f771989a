"""Build what a command needs from the settings: the service URL, its client, the store, the chunker.

The tokenizer is the one named in ``chunking.tokenizer``; without one, the model folder of the service
``orchestrator up`` runs here at that URL (its config says which folder). A remote or foreign service needs the
setting, and the error says so.
"""

from __future__ import annotations

from pathlib import Path

from search.chunking import Chunker, load_tokenizer
from search.embedding_client import MAX_RETRY_WAIT_S, EmbeddingClient
from search.errors import SettingsError
from search.settings import SearchSettings, resolve_url
from search.stores import open_store
from search.stores.base import VectorStore


def make_client(settings: SearchSettings, max_retry_wait_s: float = MAX_RETRY_WAIT_S) -> EmbeddingClient:
    return EmbeddingClient(
        resolve_url(settings),
        model=settings.model,
        api_key_env=settings.api_key_env,
        timeout_s=settings.timeout_s,
        max_retry_wait_s=max_retry_wait_s,
    )


def make_store(settings: SearchSettings) -> VectorStore:
    return open_store(settings)


def tokenizer_source(settings: SearchSettings, url: str) -> str | Path:
    """Where the chunker's tokenizer comes from; raises SettingsError when nothing names one."""
    if settings.chunking.tokenizer:
        return settings.chunking.tokenizer
    from orchestrator.config import load_config
    from orchestrator.contracts.errors import ConfigError
    from orchestrator.running import running_services

    for service in running_services():
        if service.url.rstrip("/") == url.rstrip("/"):
            try:
                return load_config(service.config).model_folder
            except ConfigError as error:
                raise SettingsError(f"the config of the service at {url} no longer loads: {error.message}") from None
    raise SettingsError(
        f"which tokenizer does {url} use? Set chunking.tokenizer (or --tokenizer) to its model folder, its "
        "tokenizer.json or its package (it is found by itself only for the service orchestrator up runs here)"
    )


def make_chunker(settings: SearchSettings, url: str) -> Chunker:
    tokenizer = load_tokenizer(tokenizer_source(settings, url))
    return Chunker(tokenizer, settings.chunking.tokens, settings.chunking.overlap)
