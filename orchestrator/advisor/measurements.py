"""The measurements file: what ``orchestrator bench --profile`` measured, per instance type, for one model.

Contract: a small JSON object, ``{"format": FORMAT, "version": 1, "model": {...}, "machine": {...}, "workload":
{...}, "method": {...}, "served": {...} | null, "types": [...]}``. ``load_measurements`` refuses a file of another
format or an unknown version (a newer tool's file must not be half-read), and measurements of another model than
the one being advised (a MiniLM slice says nothing about Qwen3). Every refusal is one ``AdvisorError`` line.

One entry per instance type measured: a CPU pool of N threads (``cpu-Nt``), a MIG profile of a board
(``1g.10gb`` on ``H100-80GB``) or a whole GPU (``gpu``). Numbers are requests of the recorded workload: throughput
at saturation (a queue always waiting, so the batcher merges requests as it does under load) and latency at low load
(one request at a time), plus the low-load latencies' quantiles over their mean, which is the shape of the
request-size distribution as the instance sees it (the simulation draws request sizes from it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.contracts.errors import OrchestratorError

FORMAT = "mig-orchestrator/measurements"
VERSION = 1
# When no served check was run: served throughput over in-process, the low end of README's measured 0.86-0.98 on
# 2 pools (Ray's and the front door's share of the cores), and the added latency of one served request.
ASSUMED_SERVED_RATIO = 0.88
ASSUMED_SERVED_EXTRA_MS = 2.0


class AdvisorError(OrchestratorError):
    """Measurements or a target the advisor cannot use (CLI exit code 2), with the fix."""

    error_type = "Advisor"


@dataclass(frozen=True)
class TypeMeasurement:
    """One instance type as measured (or, for ``source="assumed"`` rows, as written by hand; the advisor says so).

    Attributes:
        type: ``cpu-1t`` (a pool of 1 thread), a MIG profile name, or ``gpu`` (a whole GPU without MIG).
        kind: ``cpu``, ``mig`` or ``gpu``.
        board: the GPU board's table name (``H100-80GB``) for ``mig`` and ``gpu``; None for CPU pools.
        threads / compute_slices / sm_count / memory_mb: what the instance has (None where it does not apply).
        saturation_rps: requests/s with requests always waiting.
        texts_per_s: the same in texts/s.
        low_load_mean_ms / low_load_p50_ms / low_load_p99_ms: one request at a time, arrival to answer.
        size_quantiles: 21 quantiles (0, 5, ..., 100%) of the low-load latencies divided by their mean.
        requests: how many requests each phase used, and the saturating clients.
        source: ``in-process`` (backend + batcher in a pinned child), ``served`` or ``assumed``.
    """

    type: str
    kind: str
    saturation_rps: float
    texts_per_s: float
    low_load_mean_ms: float
    low_load_p50_ms: float
    low_load_p99_ms: float
    size_quantiles: tuple[float, ...]
    board: str | None = None
    threads: int | None = None
    compute_slices: int | None = None
    sm_count: int | None = None
    memory_mb: int | None = None
    requests: dict[str, int] = field(default_factory=dict)
    source: str = "in-process"


@dataclass(frozen=True)
class ServedCheck:
    """Served against in-process, measured by one ``orchestrator up`` over the measured pools (``None``: assumed)."""

    ratio: float
    extra_ms: float
    how: str


@dataclass(frozen=True)
class Measurements:
    """A whole file. ``model`` holds ``name`` and ``dimensions`` (and the backend); ``workload`` the request sizes."""

    model: dict[str, Any]
    machine: dict[str, Any]
    workload: dict[str, Any]
    method: dict[str, Any]
    types: tuple[TypeMeasurement, ...]
    served: ServedCheck | None = None

    @property
    def model_name(self) -> str:
        return str(self.model.get("name"))

    def served_ratio(self) -> tuple[float, float, bool]:
        """(served / in-process throughput, added ms per request, measured?) for the ``in-process`` rows."""
        if self.served is not None:
            return self.served.ratio, self.served.extra_ms, True
        return ASSUMED_SERVED_RATIO, ASSUMED_SERVED_EXTRA_MS, False

    def for_board(self, board: str) -> list[TypeMeasurement]:
        return [t for t in self.types if t.board == board]

    def by_type(self, name: str, board: str | None = None) -> TypeMeasurement | None:
        return next((t for t in self.types if t.type == name and (board is None or t.board == board)), None)


def to_json(measurements: Measurements) -> dict[str, Any]:
    """The file's JSON object."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": measurements.model,
        "machine": measurements.machine,
        "workload": measurements.workload,
        "method": measurements.method,
        "served": asdict(measurements.served) if measurements.served else None,
        "types": [_row_json(t) for t in measurements.types],
    }


def _row_json(row: TypeMeasurement) -> dict[str, Any]:
    out = asdict(row)
    out["size_quantiles"] = [round(q, 4) for q in row.size_quantiles]
    return {key: value for key, value in out.items() if value is not None}


def save_measurements(measurements: Measurements, path: Path) -> None:
    """Write the file (indented: it is small and meant to be read)."""
    path.write_text(json.dumps(to_json(measurements), indent=2) + "\n")


def parse_measurements(raw: object, where: str) -> Measurements:
    """Check and read a file's JSON object; raises AdvisorError naming ``where`` and what is wrong."""
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise AdvisorError(
            f'{where}: not a measurements file (no "format": "{FORMAT}"): write one with orchestrator bench --profile'
        )
    version = raw.get("version")
    if version != VERSION:
        raise AdvisorError(
            f"{where}: measurements file version {version!r} is not one this orchestrator reads (it reads version "
            f"{VERSION}): measure again with orchestrator bench --profile, or use the orchestrator that wrote it"
        )
    try:
        model = dict(raw["model"])
        if not model.get("name"):
            raise KeyError("model.name")
        types = tuple(_row(r) for r in raw["types"])
        served = ServedCheck(**raw["served"]) if raw.get("served") else None
        return Measurements(
            model=model,
            machine=dict(raw.get("machine") or {}),
            workload=dict(raw.get("workload") or {}),
            method=dict(raw.get("method") or {}),
            types=types,
            served=served,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise AdvisorError(f"{where}: malformed measurements file ({type(error).__name__}: {error})") from None


def _row(raw: dict[str, Any]) -> TypeMeasurement:
    row = TypeMeasurement(**{**raw, "size_quantiles": tuple(float(q) for q in raw["size_quantiles"])})
    if row.saturation_rps <= 0 or row.low_load_mean_ms <= 0 or len(row.size_quantiles) < 2:
        raise ValueError(f"type {row.type!r} has no usable numbers")
    return row


def load_measurements(path: Path, model: str | None = None) -> Measurements:
    """Read ``path``; with ``model``, refuse measurements of another model (names compared case-insensitively).

    Raises AdvisorError: missing or unreadable file, not JSON, another format, an unknown version, another model.
    """
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise AdvisorError(f"{path}: file not found: measure with orchestrator bench --profile --out {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AdvisorError(f"{path}: cannot read measurements: {error}") from None
    measurements = parse_measurements(raw, str(path))
    if model is not None and measurements.model_name.lower() != model.lower():
        raise AdvisorError(
            f"{path}: measured with model {measurements.model_name!r}, not {model!r}: a model's speed says nothing "
            f"about another's; measure {model} with orchestrator bench --profile"
        )
    return measurements
