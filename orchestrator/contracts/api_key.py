"""Who may call the service's routes: an API key compared by its SHA-256 (the key itself never reaches a replica), and
the endpoint groups a config may leave open (health for load balancers, metrics for Prometheus).

One rule for both sides: the replicas' HTTP app checks it (``workers.api_auth`` re-exports it), and so does the
front door for the apps it answers itself without a replica (``POST /v1/search``: ``orchestrator.steps``).
"""

from __future__ import annotations

import hashlib
import hmac

OPEN_PATHS = {"health": ("/health", "/ping"), "metrics": ("/metrics", "/instances", "/dashboard")}
MISSING_KEY_MESSAGE = "missing or wrong API key: send Authorization: Bearer <key>"


def requires_key(path: str, open_endpoints: tuple[str, ...]) -> bool:
    """True unless ``path`` belongs to an endpoint group left open by the config."""
    return not any(path.startswith(prefix) for group in open_endpoints for prefix in OPEN_PATHS.get(group, ()))


def key_matches(header: str | None, key_sha256: str) -> bool:
    """``Authorization: Bearer <key>`` whose SHA-256 equals the configured digest (constant-time compare)."""
    if not header or not header.lower().startswith("bearer "):
        return False
    digest = hashlib.sha256(header[7:].strip().encode()).hexdigest()
    return hmac.compare_digest(digest, key_sha256)
