"""The dashboard in a real headless Chromium (Debian's), against the real Ray Serve of the ``served`` fixture:
live numbers under load, a MIG view's labels and explanations, and what the page shows while a replica is killed and
replaced (totals that never go down, the retries, the instance count dropping at once).

Needs ``apt-get install -y chromium`` (gives /usr/bin/chromium) and ``pip install playwright``. Playwright drives
the system Chromium; it must never download a browser of its own (``playwright install`` does not work here).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.corpus import sentences

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
# The flags this machine's closed network needs: no background calls home, no QUIC, no GPU, no sandbox as root.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTANCES = ("pool-a", "pool-b")
UPDATE_TIMEOUT_MS = 20_000


@contextmanager
def chromium_browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright; a missing browser or library fails the test (never a skip)."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's Chromium with `apt-get install -y chromium` "
            "(do not run `playwright install`; the browser must come from Debian's packages)",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python package playwright is missing: `pip install playwright`", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class PageWatch:
    """Console errors, uncaught exceptions and requests leaving the service's origin, seen while a page runs."""

    def __init__(self, page: Any, origin: str) -> None:
        self.problems: list[str] = []
        page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("request", lambda r: None if r.url.startswith((origin, "data:")) else self.problems.append(r.url))


def field(page: Any, instance: str, name: str) -> Any:
    return page.locator(f'[data-instance="{instance}"] [data-field="{name}"]')


def numeric(locator: Any) -> float | None:
    raw = locator.get_attribute("data-value")
    return float(raw) if raw else None


# Page-side predicates for wait_for_function: function expressions, since the page's CSP refuses string eval.
ALL_CARDS = """(names) => names.every((n) => document.querySelector(`[data-instance="${n}"]`))"""
POLLED = """(n) => Number(document.body.dataset.updates) >= n"""
GREW = """([names, before]) => names.some((n) => {
    const value = (f) => Number(document.querySelector(`[data-instance="${n}"] [data-field="${f}"]`).dataset.value);
    return value("requests") > before[n].requests && value("throughput") > 0;
})"""


# The page's chart has more points than the page has polled: it drew the hub's last minute from its first answer.
HISTORY_BEFORE_POLLS = """() => {
    const samples = Number(document.querySelector('#totals [data-field="history"]').dataset.samples);
    return { samples, updates: Number(document.body.dataset.updates) };
}"""
# Records what every render showed (a MutationObserver on the page's update counter), for the kill test.
RECORD = """() => {
    window.__seen = [];
    const value = (selector) => {
        const element = document.querySelector(selector);
        return element && element.dataset.value !== "" ? Number(element.dataset.value) : null;
    };
    new MutationObserver(() => {
        const perInstance = {};
        for (const card of document.querySelectorAll("[data-instance]")) {
            const shown = card.querySelector('[data-field="requests"]').dataset.value;
            perInstance[card.dataset.instance] = shown ? Number(shown) : null;
        }
        window.__seen.push({
            requests: value('#totals [data-field="requests"]'),
            ready: value('#totals [data-field="instances"]'),
            retries: value('#totals [data-field="retries"]'),
            perInstance,
        });
    }).observe(document.body, { attributes: true, attributeFilter: ["data-updates"] });
}"""
REPLACED = """() => {
    const badges = Array.from(document.querySelectorAll('[data-field="replacements"]'));
    const ready = document.querySelector('#totals [data-field="instances"]');
    return badges.some((b) => Number(b.dataset.value) >= 1) && ready.dataset.value === ready.dataset.planned;
}"""
RETRIED = """() => Number(document.querySelector('#totals [data-field="retries"]').dataset.value) >= 1"""
LATENCIES = """(names) => names.every((n) => ["response-p50-ms", "response-p99-ms"].every(
    (f) => document.querySelector(`[data-instance="${n}"] [data-field="${f}"]`).dataset.value !== ""))"""
REPLACEMENT_TIMEOUT_MS = 120_000


def _load(url: str, stop: threading.Event, clients: int = 4, max_requests: int = 60) -> int:
    """4 clients sending 8 texts a request to loopback, until told to stop or the bounded loop ends."""
    texts = sentences(64, seed=21)

    async def run() -> int:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

            async def client(offset: int) -> int:
                done = 0
                for n in range(max_requests):
                    if stop.is_set():
                        break
                    start = (offset * 7 + n) * 8 % (len(texts) - 8)
                    body = {"input": texts[start : start + 8]}
                    async with session.post(f"{url}/v1/embeddings", json=body) as response:
                        await response.read()
                        done += response.status == 200
                return done

            return sum(await asyncio.gather(*(client(i) for i in range(clients))))

    return asyncio.run(run())


def hub_has_a_past(url: str, points: int = 3, timeout_s: float = 30.0) -> None:
    """Wait until the metrics hub keeps ``points`` seconds of history: a service started a moment ago has none yet,
    and the page can only start its charts from the past the hub has."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{url}/instances", timeout=5) as answer:
            history = json.loads(answer.read()).get("history", {}).get("throughput") or []
        if sum(value is not None for value in history) >= points:
            return
        time.sleep(0.5)
    raise AssertionError(f"the hub kept fewer than {points} points of history in {timeout_s:.0f} s")


def test_dashboard_shows_live_numbers_under_load(served, tmp_path: Path) -> None:
    url, _, _ = served
    hub_has_a_past(url)
    with chromium_browser() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        watch = PageWatch(page, url)
        response = page.goto(f"{url}/dashboard")
        assert response is not None and response.status == 200, "GET /dashboard: is register_dashboard(app) wired?"
        page.wait_for_function(ALL_CARDS, arg=list(INSTANCES), timeout=UPDATE_TIMEOUT_MS)
        first = page.evaluate(HISTORY_BEFORE_POLLS)
        assert first["samples"] > first["updates"], first  # the charts start with the hub's past, not empty
        page.wait_for_function(POLLED, arg=2, timeout=UPDATE_TIMEOUT_MS)
        before = {n: {"requests": numeric(field(page, n, "requests")) or 0} for n in INSTANCES}

        stop = threading.Event()
        result: list[int] = []
        loader = threading.Thread(target=lambda: result.append(_load(url, stop)), daemon=True)
        started = time.monotonic()
        loader.start()
        try:
            # The replicas push about once a second and the page polls once a second: a few seconds at most.
            page.wait_for_function(GREW, arg=[list(INSTANCES), before], timeout=UPDATE_TIMEOUT_MS)
            seen_after_s = time.monotonic() - started
            page.wait_for_function(LATENCIES, arg=list(INSTANCES), timeout=UPDATE_TIMEOUT_MS)
        finally:
            stop.set()
            loader.join(timeout=60)
        assert result and result[0] > 0, "the load got no successful answer"

        after = {n: numeric(field(page, n, "requests")) or 0 for n in INSTANCES}
        assert sum(after.values()) > sum(b["requests"] for b in before.values()), (before, after)
        assert seen_after_s < UPDATE_TIMEOUT_MS / 1000
        for name in INSTANCES:
            assert field(page, name, "name").inner_text() == name
            assert field(page, name, "device-kind").inner_text() == "cpu"
            assert field(page, name, "gpu-labels").is_hidden()  # CPU pools carry no GPU labels
            assert int(field(page, name, "history").get_attribute("data-samples")) >= 2
            p50, p99 = numeric(field(page, name, "response-p50-ms")), numeric(field(page, name, "response-p99-ms"))
            assert p50 is not None and p99 is not None and 0 < p50 <= p99, (name, p50, p99)
            assert field(page, name, "response-p99-ms").is_visible()

        totals = page.locator("#totals")
        total_requests = numeric(totals.locator('[data-field="requests"]'))
        assert total_requests is not None and total_requests >= sum(after.values())
        assert numeric(totals.locator('[data-field="throughput"]')) is not None
        assert (numeric(totals.locator('[data-field="memory"]')) or 0) > 0
        assert totals.locator('[data-total="gpu-utilization"]').is_hidden()  # every instance is a CPU pool
        assert numeric(totals.locator('[data-field="instances"]')) == 2  # through the front door: ready / planned
        assert "ready" in totals.locator('[data-field="instances-unit"]').inner_text()
        assert numeric(totals.locator('[data-field="retries"]')) is not None  # the front door's, known
        assert numeric(totals.locator('[data-field="client-errors"]')) is not None
        assert page.locator("#status").get_attribute("data-state") == "ok"

        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        data = shot.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
        assert not watch.problems, watch.problems


def _mig_view() -> dict[str, Any]:
    """An /instances answer as a MIG machine gives it, with the nulls the page must explain."""
    mig = {"instance": "slice-1", "model": "m", "node": "h", "device_kind": "mig", "gpu": "0", "UUID": "GPU-1"}
    idle = {
        "load": None,
        "queue_length": None,
        "in_flight": 0,
        "response_time_ms": None,
        "queue_time_ms": None,
        "inference_time_ms": None,
        "throughput_embeddings_per_s": None,
        "tokens_per_s": None,
        "requests": 0,
        "failures": {},
        "error_rate": 0.0,
        "memory_used_bytes": None,
        "memory_total_bytes": None,
        "capacity": None,
        "reporting": True,
    }
    busy = {
        **idle,
        "load": 0.9,
        "queue_length": 12,
        "throughput_embeddings_per_s": 512.5,
        "requests": 800,
        "failures": {"Overloaded": 3},
        "error_rate": 3 / 800,
        "memory_used_bytes": 2 * 2**30,
        "memory_total_bytes": 5 * 2**30,
    }
    return {
        "gpu_utilization": {"value": None, "why": "not measured: NVML reports no utilisation for MIG slices"},
        "memory_usage_bytes": 2 * 2**30,
        "throughput_embeddings_per_s": 512.5,
        "error_rates": {"requests": 800, "failures": 3, "rate": 3 / 800},
        "instance_stats": {
            "slice-1": {"labels": {**mig, "GPU_I_ID": "7", "GPU_I_PROFILE": "1g.5gb"}, **busy},
            "slice-2": {"labels": {**mig, "instance": "slice-2", "GPU_I_ID": "8", "GPU_I_PROFILE": "1g.5gb"}, **idle},
        },
    }


def test_dashboard_shows_gpu_labels_and_explains_missing_values(served) -> None:
    """The page on a MIG view (served to the browser in place of /instances): labels, load bar, n/a tooltips."""
    url, _, _ = served
    view = json.dumps(_mig_view())
    with chromium_browser() as browser:
        page = browser.new_page()
        watch = PageWatch(page, url)
        page.route(
            f"{url}/instances", lambda route: route.fulfill(status=200, content_type="application/json", body=view)
        )
        page.goto(f"{url}/dashboard")
        page.wait_for_function(ALL_CARDS, arg=["slice-1", "slice-2"], timeout=UPDATE_TIMEOUT_MS)
        page.wait_for_function(POLLED, arg=2, timeout=UPDATE_TIMEOUT_MS)

        assert field(page, "slice-1", "gpu-labels").is_visible()
        assert field(page, "slice-1", "GPU_I_PROFILE").inner_text() == "1g.5gb"
        assert field(page, "slice-1", "GPU_I_ID").inner_text() == "7"
        assert field(page, "slice-1", "gpu").inner_text() == "0"
        assert field(page, "slice-1", "load").inner_text() == "90%"
        assert field(page, "slice-1", "load-bar").get_attribute("data-level") == "high"
        assert field(page, "slice-1", "failures-by-type").inner_text() == "Overloaded: 3"
        assert field(page, "slice-1", "memory").inner_text() == "2.0 GiB / 5.0 GiB"

        for name in ("load", "throughput", "response-ms", "memory", "gpu-utilization"):
            shown = field(page, "slice-2", name)
            assert shown.inner_text() == "n/a", name
            assert len(shown.get_attribute("title") or "") > 10, f"{name}: n/a without an explanation"
        assert "MIG" in (field(page, "slice-2", "gpu-utilization").get_attribute("title") or "")
        gpu = page.locator('#totals [data-total="gpu-utilization"]')
        assert gpu.is_visible() and "MIG" in (
            gpu.locator('[data-field="gpu-utilization"]').get_attribute("title") or ""
        )
        assert not watch.problems, watch.problems


def _replica_pids() -> dict[str, int]:
    """Serve replica actor name -> its worker process id (through Ray's GCS, as test_replica_loss finds them)."""
    import ray

    pids = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if "EmbeddingReplica" in entry["name"]:
            actor = ray.get_actor(entry["name"], namespace=entry["namespace"])
            pids[entry["name"]] = ray.get(actor.__ray_call__.remote(lambda _self: os.getpid()), timeout=30)
    return pids


def test_dashboard_totals_never_go_down_when_a_replica_is_replaced(served) -> None:
    """A replica killed under load: the page's totals keep growing (the hub carries the dead replica's counters),
    the front door's retries appear, and the instance count drops at once and comes back with the replacement."""
    url, _, _ = served
    with chromium_browser() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        watch = PageWatch(page, url)
        page.goto(f"{url}/dashboard")
        page.wait_for_function(ALL_CARDS, arg=list(INSTANCES), timeout=UPDATE_TIMEOUT_MS)
        page.evaluate(RECORD)

        stop = threading.Event()
        result: list[int] = []
        loader = threading.Thread(target=lambda: result.append(_load(url, stop, max_requests=10_000)), daemon=True)
        loader.start()
        try:
            page.wait_for_function(POLLED, arg=int(page.evaluate("() => document.body.dataset.updates")) + 3)
            pids = _replica_pids()
            assert len(pids) == 2, pids
            killed_at = len(page.evaluate("() => window.__seen"))
            os.kill(next(iter(pids.values())), signal.SIGKILL)
            page.wait_for_function(REPLACED, timeout=REPLACEMENT_TIMEOUT_MS)
            page.wait_for_function(RETRIED, timeout=UPDATE_TIMEOUT_MS)
            page.wait_for_function(POLLED, arg=int(page.evaluate("() => document.body.dataset.updates")) + 2)
        finally:
            stop.set()
            loader.join(timeout=60)
        assert result and result[0] > 0, "the load got no successful answer"

        seen = page.evaluate("() => window.__seen")
        badges = page.locator('[data-field="replacements"]')
        victim = next(n for n in INSTANCES if (numeric(field(page, n, "replacements")) or 0) >= 1)
        assert badges.count() == 2 and field(page, victim, "replacements").is_visible()
        before = seen[killed_at - 1]["perInstance"][victim]
        assert before, "the load had not reached the killed instance"
        totals = [entry["requests"] for entry in seen if entry["requests"] is not None]
        assert len(totals) >= 5 and all(a <= b for a, b in zip(totals, totals[1:], strict=False)), totals
        ours = [entry["perInstance"].get(victim) for entry in seen if entry["perInstance"].get(victim) is not None]
        assert all(a <= b for a, b in zip(ours, ours[1:], strict=False)), ours
        assert ours[-1] >= before  # the replacement's count adds to its predecessor's: it does not start again
        assert min(entry["ready"] for entry in seen) == 1, [entry["ready"] for entry in seen]  # the dip was shown
        assert seen[-1]["ready"] == 2 and seen[-1]["retries"] >= 1
        assert not watch.problems, watch.problems
