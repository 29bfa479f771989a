"""Which services ``orchestrator up`` runs on this machine for this user, so that ``status`` finds the one running
instead of reading a port from whatever config lies in the working folder.

Each ``up`` writes ``<pid>.json`` (its URL and config) under ``$XDG_RUNTIME_DIR/mig-orchestrator`` (or the user's
cache folder) once Ready, and removes it when it stops; an entry whose process is gone is ignored and removed.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunningService:
    pid: int
    url: str
    config: str


def _folder() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "mig-orchestrator" / "running"


def record(url: str, config: Path) -> Path | None:
    """Note this process's service; returns the entry to ``forget`` (None when it cannot be written: no harm)."""
    entry = _folder() / f"{os.getpid()}.json"
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.write_text(json.dumps({"pid": os.getpid(), "url": url, "config": str(config.resolve())}))
    except OSError:
        return None
    return entry


def forget(entry: Path | None) -> None:
    if entry is not None:
        with contextlib.suppress(OSError):
            entry.unlink()


def running_services() -> list[RunningService]:
    """The services recorded by ``up`` processes still alive, oldest pid first; stale entries are removed."""
    found = []
    for entry in sorted(_folder().glob("*.json")):
        try:
            data = json.loads(entry.read_text())
            service = RunningService(int(data["pid"]), str(data["url"]), str(data["config"]))
        except (OSError, ValueError, KeyError):
            continue
        if _alive(service.pid):
            found.append(service)
        else:
            forget(entry)
    return sorted(found, key=lambda service: service.pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process with that pid: not ours, the entry is stale
        return False
    return True
