"""The dashboard's routes in-process: the page, its assets, their content types, 404s, and no external URLs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.fakes import fake_service
from workers.dashboard import ASSET_DIR, ASSETS, register_dashboard
from workers.http_api import build_app

EXTERNAL_URL = re.compile(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", re.IGNORECASE)


@pytest.fixture
def client(minilm_folder: Path) -> Iterator[TestClient]:
    app = build_app(fake_service(minilm_folder))
    # build_app wires the dashboard in; until it does (or if it stops), add it here so these tests still run.
    if "/dashboard" not in [getattr(route, "path", None) for route in app.routes]:
        register_dashboard(app)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


class _References(HTMLParser):
    """Every src/href in the page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def test_page_is_html_with_a_strict_content_security_policy(client: TestClient) -> None:
    response = client.get("/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>" in response.text and 'id="card-template"' in response.text
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("name", "media_type"),
    [("dashboard.js", "text/javascript; charset=utf-8"), ("dashboard.css", "text/css; charset=utf-8")],
)
def test_assets_are_served_with_their_content_type(client: TestClient, name: str, media_type: str) -> None:
    response = client.get(f"/dashboard/assets/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert response.content == (ASSET_DIR / name).read_bytes() and response.content


@pytest.mark.parametrize(
    "name", ["nope.js", "index.html", "..%2Fdashboard.py", "%2E%2E%2F%2E%2E%2Fpyproject.toml", "DASHBOARD.JS"]
)
def test_unknown_assets_are_404_json(client: TestClient, name: str) -> None:
    response = client.get(f"/dashboard/assets/{name}")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error_type"] == "NotFound" and "dashboard.js" in body["error"]


def test_paths_beyond_the_assets_are_404_json_too(client: TestClient) -> None:
    for path in ("/dashboard/assets/a/b.js", "/dashboard/assets/", "/dashboard/assets/../../workers/dashboard.py"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error_type"] == "NotFound", path


def test_page_references_only_its_own_assets(client: TestClient) -> None:
    parser = _References()
    parser.feed(client.get("/dashboard").text)
    local = [url for url in parser.urls if url.startswith("/dashboard/assets/")]
    assert sorted(url.rsplit("/", 1)[1] for url in local) == ["dashboard.css", "dashboard.js"]
    others = set(parser.urls) - set(local)
    assert others <= {"/metrics", "data:,"}, others  # the Prometheus link and the empty favicon
    for url in local:
        assert client.get(url).status_code == 200


def test_no_asset_names_an_external_url() -> None:
    files = sorted(ASSET_DIR.iterdir())
    assert {path.name for path in files} == set(ASSETS)  # nothing shipped that is not served, nor the reverse
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text, path.name
        assert not EXTERNAL_URL.search(text), (path.name, EXTERNAL_URL.search(text))
        assert "@import" not in text and "url(" not in text, path.name  # no fonts or images pulled in by CSS


def test_page_polls_instances_on_its_own_origin() -> None:
    script = (ASSET_DIR / "dashboard.js").read_text(encoding="utf-8")
    assert 'new URL("/instances", window.location.origin)' in script
    assert "POLL_MS = 1000" in script


def test_instances_view_the_page_reads_is_served_alongside(client: TestClient) -> None:
    view = client.get("/instances").json()
    stats = view["instance_stats"]["pool-0"]
    # The keys the page renders; a rename in orchestrator/instances_view.py must show up here, not as a blank card.
    script = (ASSET_DIR / "dashboard.js").read_text(encoding="utf-8")
    for key in (
        "load",
        "queue_length",
        "in_flight",
        "response_time_ms",
        "response_p50_ms",
        "response_p99_ms",
        "latency_window_s",
        "queue_time_ms",
        "inference_time_ms",
        "throughput_embeddings_per_s",
        "tokens_per_s",
        "requests",
        "failures",
        "client_errors",
        "server_failures",
        "replacements",
        "history",
        "error_rate",
        "memory_used_bytes",
        "memory_total_bytes",
        "reporting",
        "labels",
    ):
        assert key in stats and f"stats.{key}" in script, key
    for key in (
        "throughput_embeddings_per_s",
        "memory_usage_bytes",
        "gpu_utilization",
        "error_rates",
        "history",
        "models",
    ):
        assert key in view and f"view.{key}" in script, key
    for key in ("requests", "client_errors", "server_failures", "overloaded", "server_failure_rate"):
        assert key in view["error_rates"] and f"errors.{key}" in script, key
    # Per-model totals (several models behind one endpoint) and each card's model.
    assert [entry["instances"] for entry in view["models"].values()] == [["pool-0"]]
    for key in ("instances", "reporting", "requests", "throughput_embeddings_per_s", "server_failures"):
        assert f"entry.{key}" in script, key
    assert "labels.model" in script
    # Added by the front door (orchestrator.instances_view.with_front_door); the page must read them when present.
    for key in ("view.front_door", "view.instances_ready", "view.instances_planned", "front.retries"):
        assert key in script, key


def test_a_422_counts_as_a_client_error_not_a_server_failure(client: TestClient) -> None:
    assert client.post("/embed", json={"inputs": "a", "unknown_field": 1}).status_code == 422
    assert client.post("/embed", json={"inputs": "fine"}).status_code == 200
    stats = client.get("/instances").json()["instance_stats"]["pool-0"]
    assert stats["requests"] == 2 and stats["client_errors"] == 1 and stats["server_failures"] == 0
