"""The service's ``POST /v1/search``: the config's ``search:`` section read by the search layer, and the search app
mounted on the front door behind the service's API key.

The search layer is an optional extra that depends on this package, never the reverse: it is imported here only when
a config has the section. The route answers in the front door itself (its requests never reach a replica), so it
checks the API key as replicas check theirs, and its own calls to this service's ``/v1/embeddings`` carry the
caller's ``Authorization``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.config import LoadedConfig, ServerConfig
from orchestrator.contracts.api_key import MISSING_KEY_MESSAGE, key_matches
from orchestrator.contracts.errors import ConfigError, OrchestratorError, Unauthorized
from orchestrator.contracts.forwarding import ForwardedResponse, error_response

if TYPE_CHECKING:
    from orchestrator.frontdoor.app import AsgiApp, FrontDoor, Receive, Scope, Send
    from search.settings import SearchSettings

logger = logging.getLogger(__name__)

SEARCH_PREFIX = "/v1/search"
SEARCH_EXTRA = 'pip install "mig-orchestrator[search]"'


def own_url(server: ServerConfig) -> str:
    """The service's URL as a process on this machine reaches it (a wildcard host is reached on loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(server.host, server.host)
    return f"http://[{host}]:{server.port}" if ":" in host else f"http://{host}:{server.port}"


def search_settings(loaded: LoadedConfig) -> SearchSettings | None:
    """The config's ``search:`` section as the search layer's settings (None without one): inline, or read from the
    file it names (relative: to the config's folder); a relative store path is relative to the file that wrote it,
    and ``url`` defaults to this service. Raises ConfigError for a bad section or a missing search extra."""
    raw = loaded.config.search
    if raw is None:
        return None
    source = loaded.source_path
    try:
        import search.http  # noqa: F401  (what `up` mounts: its imports must be there too)
        from search.errors import SettingsError
        from search.settings import load_settings, parse_settings, store_relative_to
        from search.stores import missing_driver
    except ImportError as error:
        missing = error.name or str(error)
        raise ConfigError(f"{source}: search: the search extra is not installed ({missing}): {SEARCH_EXTRA}") from None
    folder = Path(source).parent if source != "<config>" else Path.cwd()
    try:
        if isinstance(raw, str):
            path = Path(raw).expanduser()
            settings = load_settings(path if path.is_absolute() else folder / path)
        else:
            settings = store_relative_to(parse_settings(raw, source, key_prefix="search"), folder)
    except SettingsError as error:
        raise ConfigError(error.message) from None
    missing = missing_driver(settings)
    if missing is not None:
        kind = settings.store.kind
        raise ConfigError(f"{source}: search: a {kind} store needs {missing}, which is not installed: {SEARCH_EXTRA}")
    if settings.url is None:
        settings = settings.model_copy(update={"url": own_url(loaded.config.server)})
    return settings


def mount_search(front_door: FrontDoor, loaded: LoadedConfig) -> bool:
    """Answer ``POST /v1/search`` on the front door when the config has a ``search:`` section (True then).

    The route answers in the front door itself (its requests never reach a replica), so it checks the API key here,
    as replicas check theirs; its calls to this service's ``/v1/embeddings`` carry the caller's ``Authorization``
    (only to this service: a ``url`` elsewhere gets the settings' own ``api_key_env``). A failure of the route is a
    JSON answer, never the service's end. Raises ConfigError as ``search_settings`` does.
    """
    settings = search_settings(loaded)
    if settings is None:
        return False
    from search.http import build_search_app

    server = loaded.config.server
    app = build_search_app(
        settings,
        forward_authorization=(settings.url or "").rstrip("/") == own_url(server),
        max_body_bytes=server.max_request_bytes,
        body_timeout_s=server.client_timeout_s,
    )
    front_door.mount(SEARCH_PREFIX, guarded(app, loaded.api_key_sha256))
    return True


def guarded(app: AsgiApp, key_sha256: str | None) -> AsgiApp:
    """``app`` behind the service's API key when one is set (401 JSON, as every other route answers), with a JSON 500
    for an exception the app lets out before it answered (logged; the server keeps serving)."""

    async def guarded_app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if key_sha256 is not None and not key_matches(_header(scope, b"authorization"), key_sha256):
            # The body is not read: the connection closes after the answer rather than reading it for nothing.
            await _send_whole(send, error_response(path, Unauthorized(MISSING_KEY_MESSAGE)), close=_has_body(scope))
            return
        started = False

        async def watched(message: dict[str, object]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, receive, watched)
        except Exception:
            logger.exception("%s %s failed", scope.get("method"), path)
            if not started:
                failure = OrchestratorError(f"internal error in {SEARCH_PREFIX}: see the service's log")
                await _send_whole(send, error_response(path, failure), close=True)

    return guarded_app


def _header(scope: Scope, name: bytes) -> str | None:
    value = next((value for key, value in scope.get("headers", ()) if bytes(key).lower() == name), None)
    return None if value is None else bytes(value).decode("latin-1")


def _has_body(scope: Scope) -> bool:
    length = _header(scope, b"content-length")
    return _header(scope, b"transfer-encoding") is not None or (length is not None and length.strip() not in ("", "0"))


async def _send_whole(send: Send, answer: ForwardedResponse, close: bool) -> None:
    headers = [*answer.headers, (b"content-length", str(len(answer.body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})
