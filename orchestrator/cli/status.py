"""``orchestrator status [--watch]``: the service's ``/instances`` snapshot as a table in the terminal."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from orchestrator.cli.output import console, fail
from orchestrator.config import load_config
from orchestrator.contracts.errors import ConfigError
from orchestrator.running import running_services


def fetch_instances(url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """GET {url}/instances; raises OSError (or ValueError for a non-JSON answer)."""
    with urllib.request.urlopen(f"{url}/instances", timeout=timeout_s) as response:
        return json.loads(response.read())


def fetch_health(url: str, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """GET {url}/health (readiness counted by the front door); None if it does not answer JSON (503 included)."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout_s) as response:
            payload = json.loads(response.read())
    except urllib.error.HTTPError as error:  # 503 while no instance runs still has a JSON body
        try:
            payload = json.loads(error.read())
        except ValueError:
            return None
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def readiness_line(health: dict[str, Any] | None) -> str:
    """``instances ready 1/2 (degraded)`` from /health, or why it is unknown."""
    if health is None or "instances_ready" not in health:
        return "instances ready: unknown (no /health answer)"
    status = health.get("status") or health.get("error_type") or "?"
    return f"instances ready {health['instances_ready']}/{health['instances_planned']} ({status})"


def _number(value: float | None, digits: int = 1, scale: float = 1.0) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}"


def _memory(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f} MiB"


def status_table(view: dict[str, Any], url: str, health: dict[str, Any] | None = None) -> Table:
    """One row per instance, grouped by model with a total row per model when several are served, then a totals
    caption (readiness first when ``health`` is given)."""
    title = f"Instances at {url}" + (f": {readiness_line(health)}" if health is not None else "")
    table = Table(title=title, title_justify="left")
    models = view.get("models") or {}
    several = len(models) > 1
    columns = (
        "instance",
        "device",
        "load",
        "queue",
        "in flight",
        "p50/p99 ms",
        "emb/s",
        "requests",
        "errors",
        "memory",
    )
    for column in ("model", *columns) if several else columns:
        table.add_column(column, justify="left" if column in ("model", "instance", "device") else "right")
    stats_by_name = view["instance_stats"]
    groups = [(model, entry["instances"]) for model, entry in models.items()] or [("", list(stats_by_name))]
    for model, names in groups:
        for name in names:
            table.add_row(*((model,) if several else ()), *_instance_cells(name, stats_by_name[name]))
        if several:
            entry = models[model]
            errors = entry["client_errors"] + entry["server_failures"] + entry["overloaded"]
            table.add_row(
                f"[bold]{model}[/bold]",
                f"[bold]{entry['reporting']}/{len(names)} reporting[/bold]",
                *([""] * 5),
                f"[bold]{_number(entry['throughput_embeddings_per_s'])}[/bold]",
                f"[bold]{entry['requests']}[/bold]",
                f"[bold]{errors}[/bold]",
                "",
                end_section=True,
            )
    errors = view["error_rates"]
    utilisation = view["gpu_utilization"]
    table.caption = (
        f"total {view['throughput_embeddings_per_s']:.1f} emb/s, {errors['requests']} requests, "
        f"error rate {errors['rate'] * 100:.1f}%, memory {_memory(view['memory_usage_bytes'])}; "
        f"GPU utilisation: {utilisation['value'] if utilisation['value'] is not None else utilisation['why']}"
        + _front_door_processes(view.get("front_door"))
    )
    return table


def _front_door_processes(front_door: dict[str, Any] | None) -> str:
    """``; 3 front-door processes (requests 52 / 30 / 28)`` when ``server.front_door_workers`` started several."""
    workers = (front_door or {}).get("workers") or []
    if len(workers) < 2:
        return ""
    shares = " / ".join(str(worker.get("requests", 0)) for worker in workers)
    return f"; {len(workers)} front-door processes (requests {shares})"


def _instance_cells(name: str, stats: dict[str, Any]) -> tuple[str, ...]:
    labels = stats.get("labels", {})
    device = labels.get("device_kind", "?")
    if labels.get("GPU_I_PROFILE"):
        device = f"GPU {labels.get('gpu')} {labels['GPU_I_PROFILE']} (GI {labels.get('GPU_I_ID')})"
    errors = ", ".join(f"{kind} {count}" for kind, count in sorted(stats["failures"].items())) or "0"
    p50, p99 = stats.get("response_p50_ms"), stats.get("response_p99_ms")
    latency = f"{_number(p50)}/{_number(p99)}" if p50 is not None else _number(stats["response_time_ms"])
    return (
        name if stats.get("reporting", True) else f"{name} (stale)",
        device,
        _number(stats["load"], 0, 100) + ("%" if stats["load"] is not None else ""),
        str(stats["queue_length"] if stats["queue_length"] is not None else "n/a"),
        str(stats["in_flight"]),
        latency,
        _number(stats["throughput_embeddings_per_s"]),
        str(stats["requests"]),
        errors,
        _memory(stats["memory_used_bytes"]),
    )


def _service_url(config: Path | None) -> str:
    if config is not None:
        try:
            server = load_config(config).config.server
        except ConfigError as error:
            raise fail(error.message, 2) from None
        return f"http://{server.host}:{server.port}"
    services = running_services()
    if len(services) == 1:
        return services[0].url
    if not services:
        raise fail("no orchestrator up is running on this machine: start one, or pass --url for another machine", 1)
    listed = "; ".join(f"{s.url} ({s.config}, pid {s.pid})" for s in services)
    raise fail(f"{len(services)} services are running here: {listed}; pick one with --url", 2)


def status_command(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Query the service of this config (its server.host/port).")
    ] = None,
    url: Annotated[str | None, typer.Option(help="Service URL, e.g. http://host:8000.")] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C.")] = False,
    interval_s: Annotated[float, typer.Option(help="Seconds between refreshes with --watch.")] = 1.0,
) -> None:
    """Show each instance's load, queue, latency, throughput, errors and memory (from GET /instances).

    Without --url or --config: the service `orchestrator up` runs on this machine (the one, or says which there are).
    """
    url = (url or _service_url(config)).rstrip("/")

    def render() -> Table:
        try:
            view = fetch_instances(url)
            return status_table(view, url, fetch_health(url))
        except (OSError, ValueError, KeyError) as error:
            reason = getattr(error, "reason", error)
            raise fail(f"no orchestrator answers at {url} ({reason}): start it with orchestrator up", 1) from None

    if not watch:
        console.print(render())
        return
    from rich.live import Live

    with Live(render(), console=console, refresh_per_second=4) as live:
        try:
            while True:
                time.sleep(interval_s)
                live.update(render())
        except KeyboardInterrupt:
            pass
