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

from orchestrator.config import load_config
from orchestrator.errors import ConfigError


def fetch_instances(url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """GET {url}/instances; raises OSError (or ValueError for a non-JSON answer)."""
    with urllib.request.urlopen(f"{url}/instances", timeout=timeout_s) as response:
        return json.loads(response.read())


def _number(value: float | None, digits: int = 1, scale: float = 1.0) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}"


def _memory(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f} MiB"


def status_table(view: dict[str, Any], url: str) -> Table:
    """One row per instance, then a totals caption."""
    table = Table(title=f"Instances at {url}", title_justify="left")
    for column in (
        "instance",
        "device",
        "load",
        "queue",
        "in flight",
        "resp ms",
        "emb/s",
        "requests",
        "errors",
        "memory",
    ):
        table.add_column(column, justify="left" if column in ("instance", "device") else "right")
    for name, stats in view["instance_stats"].items():
        labels = stats.get("labels", {})
        device = labels.get("device_kind", "?")
        if labels.get("GPU_I_PROFILE"):
            device = f"GPU {labels.get('gpu')} {labels['GPU_I_PROFILE']} (GI {labels.get('GPU_I_ID')})"
        errors = ", ".join(f"{kind} {count}" for kind, count in sorted(stats["failures"].items())) or "0"
        table.add_row(
            name if stats.get("reporting", True) else f"{name} (stale)",
            device,
            _number(stats["load"], 0, 100) + ("%" if stats["load"] is not None else ""),
            str(stats["queue_length"] if stats["queue_length"] is not None else "n/a"),
            str(stats["in_flight"]),
            _number(stats["response_time_ms"]),
            _number(stats["throughput_embeddings_per_s"]),
            str(stats["requests"]),
            errors,
            _memory(stats["memory_used_bytes"]),
        )
    errors = view["error_rates"]
    utilisation = view["gpu_utilization"]
    table.caption = (
        f"total {view['throughput_embeddings_per_s']:.1f} emb/s, {errors['requests']} requests, "
        f"error rate {errors['rate'] * 100:.1f}%, memory {_memory(view['memory_usage_bytes'])}; "
        f"GPU utilisation: {utilisation['value'] if utilisation['value'] is not None else utilisation['why']}"
    )
    return table


def status_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="Config whose server.host/port to query.")] = Path(
        "configs/mig_config.yaml"
    ),
    url: Annotated[str | None, typer.Option(help="Service URL (overrides the config), e.g. http://host:8000.")] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C.")] = False,
    interval_s: Annotated[float, typer.Option(help="Seconds between refreshes with --watch.")] = 1.0,
) -> None:
    """Show each instance's load, queue, latency, throughput, errors and memory (from GET /instances)."""
    from orchestrator.cli import _fail, console

    if url is None:
        try:
            server = load_config(config).config.server
        except ConfigError as error:
            raise _fail(error.message, 2) from None
        url = f"http://{server.host}:{server.port}"
    url = url.rstrip("/")

    def render() -> Table:
        try:
            return status_table(fetch_instances(url), url)
        except (OSError, ValueError, KeyError) as error:
            reason = getattr(error, "reason", error)
            raise _fail(f"no orchestrator answers at {url} ({reason}): start it with orchestrator up", 1) from None

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
