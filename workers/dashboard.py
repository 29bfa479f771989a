"""A live dashboard page for the service: ``GET /dashboard`` and its static assets.

The page is plain HTML, CSS and JavaScript shipped in ``workers/dashboard_assets/`` (no CDN, no framework, no
external fonts: the service often runs on machines without internet access). It polls ``GET /instances`` once a
second from the browser, so the server side is only three static files, read once and kept in memory. Its charts
draw the last minute that ``/instances`` carries (kept by the metrics hub), so they are full from the first answer;
through the front door it also shows the retries and the instances the front door can reach right now.

Only the names in ``ASSETS`` are served, which rules out path traversal by construction rather than by checking
paths. A name outside them is the JSON 404 every route answers (``contracts.errors.error_body``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import orjson
from fastapi import FastAPI
from fastapi.responses import Response

from orchestrator.contracts.errors import NotFound, error_body

# Beside this module; pyproject's package-data ships the folder with the ``workers`` package.
ASSET_DIR = Path(__file__).resolve().parent / "dashboard_assets"
PAGE = "index.html"

# name -> media type; the page and everything it loads. Nothing else under the folder is reachable.
ASSETS: dict[str, str] = {
    PAGE: "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}

# The browser itself refuses anything not from this origin, so a stray external URL in an asset cannot load.
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # The assets are tiny and change with each release; revalidating keeps an upgraded service's page current.
    "Cache-Control": "no-cache",
}


@lru_cache(maxsize=len(ASSETS))
def asset_bytes(name: str) -> bytes:
    """The content of one known asset (read from the installed package once, then from memory)."""
    if name not in ASSETS:
        raise KeyError(name)
    return (ASSET_DIR / name).read_bytes()


def _asset_response(name: str) -> Response:
    return Response(asset_bytes(name), media_type=ASSETS[name], headers=SECURITY_HEADERS)


def _not_found(path: str, message: str) -> Response:
    error = NotFound(message)
    return Response(orjson.dumps(error_body(path, error)), status_code=error.status_code, media_type="application/json")


def register_dashboard(app: FastAPI) -> None:
    """Add ``GET /dashboard`` (the page) and ``GET /dashboard/assets/{name}`` (its files) to ``app``."""

    @app.api_route("/dashboard", methods=["GET", "HEAD"], include_in_schema=False)
    async def dashboard_page() -> Response:
        return _asset_response(PAGE)

    # ``:path`` so that nested or encoded-slash names also reach the one 404 below, whatever app this is added to.
    @app.api_route("/dashboard/assets/{name:path}", methods=["GET", "HEAD"], include_in_schema=False)
    async def dashboard_asset(name: str) -> Response:
        if name not in ASSETS or name == PAGE:
            known = ", ".join(sorted(n for n in ASSETS if n != PAGE))
            return _not_found(
                f"/dashboard/assets/{name}", f"no dashboard asset named {name!r}; the assets are: {known}"
            )
        return _asset_response(name)
