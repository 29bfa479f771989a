"""The measurements file: what ``orchestrator bench --profile`` measured, per instance type, for one model.

Contract: a small JSON object, ``{"format": FORMAT, "version": 3, "model": {...}, "machine": {...}, "workload":
{...}, "method": {...}, "served": {...} | null, "types": [...]}``. ``load_measurements`` refuses a file of another
format or an unknown version (a newer tool's file must not be half-read), and measurements of another model than
the one being advised (a MiniLM slice says nothing about Qwen3). Every refusal is one ``AdvisorError`` line.

Versions: 2 adds the service-time spread at saturation (``saturation_quantiles`` on a type, and per type on the
served check); everything else is as in 1. A version 1 file still loads, without that spread: the simulation then
draws every service time from the low-load latency distribution, as it did before version 2. Version 3 adds, per CPU
type on the served check, the service times measured at two or more loads (``load_points``: lone and back to back,
``load_points.LoadPoint``), which the prediction uses in place of the spread at saturation; a version 2 file loads
and predicts as before.

One entry per instance type measured: a CPU pool of N threads (``cpu-Nt``), a MIG profile of a board
(``1g.10gb`` on ``H100-80GB``) or a whole GPU (``gpu``). Numbers are requests of the recorded workload: throughput
at saturation (a queue always waiting, so the batcher merges requests as it does under load) and latency at low load
(one request at a time), plus the low-load latencies' quantiles over their mean, which is the shape of the
request-size distribution as the instance sees it (the simulation draws request sizes from it), and, from version 2,
the spread of the service times of requests served back to back at saturation (``spread.departure_spread``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.advisor.load_points import LoadPoint
from orchestrator.contracts.errors import OrchestratorError

FORMAT = "mig-orchestrator/measurements"
VERSION = 3
READS_VERSIONS = (1, 2, 3)  # 1: before the saturation spread; 2: before the load points (each loads without them)
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
        saturation_quantiles: 21 quantiles of the service times at saturation (back to back, from the instance's
            completions) over their mean, measured in-process; None when not measured (a version 1 file).
        load_points: the service times at loads below saturation, measured in-process (GPU types; version 3).
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
    saturation_quantiles: tuple[float, ...] | None = None
    load_points: tuple[LoadPoint, ...] = ()


@dataclass(frozen=True)
class ServedCheck:
    """Served against in-process, measured by one ``orchestrator up`` over the measured pools (``None``: assumed).

    ``saturation_quantiles`` holds, per CPU type (``cpu-1t``), the service-time spread at saturation as served (front
    door, lane and the replica's event loop included), in the form of ``TypeMeasurement.saturation_quantiles``;
    ``load_points`` per CPU type the service times measured at given loads (open loop, version 3).
    """

    ratio: float
    extra_ms: float
    how: str
    saturation_quantiles: dict[str, tuple[float, ...]] = field(default_factory=dict)
    load_points: dict[str, tuple[LoadPoint, ...]] = field(default_factory=dict)


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

    def service_spread(self, row: TypeMeasurement) -> tuple[tuple[float, ...] | None, str]:
        """The row's service-time spread at saturation as served, and where it comes from.

        The served check's spread for the row's type when there is one (an in-process row is predicted as served,
        and the served path adds its own spread), else the row's own (in-process, or written by hand), else None:
        the simulation then falls back to the low-load latencies (a version 1 file, or a type measured without).
        """
        if row.source == "in-process" and self.served is not None and row.type in self.served.saturation_quantiles:
            return self.served.saturation_quantiles[row.type], "served, at saturation"
        if row.saturation_quantiles is not None:
            return row.saturation_quantiles, f"{row.source}, at saturation"
        return None, "none measured: the low-load latencies"

    def load_points(self, row: TypeMeasurement) -> tuple[LoadPoint, ...]:
        """The service times measured at load for the row's type: the served check's (an in-process row is predicted
        as served), else the row's own (in-process, on a GPU); empty when none were measured."""
        if row.source == "in-process" and self.served is not None and row.type in self.served.load_points:
            return self.served.load_points[row.type]
        return row.load_points


def to_json(measurements: Measurements) -> dict[str, Any]:
    """The file's JSON object."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": measurements.model,
        "machine": measurements.machine,
        "workload": measurements.workload,
        "method": measurements.method,
        "served": _served_json(measurements.served) if measurements.served else None,
        "types": [_row_json(t) for t in measurements.types],
    }


def _rounded(quantiles: tuple[float, ...]) -> list[float]:
    return [round(q, 4) for q in quantiles]


def _row_json(row: TypeMeasurement) -> dict[str, Any]:
    out = asdict(row)
    out["size_quantiles"] = _rounded(row.size_quantiles)
    if row.saturation_quantiles is not None:
        out["saturation_quantiles"] = _rounded(row.saturation_quantiles)
    out["load_points"] = [_point_json(point) for point in row.load_points] or None
    return {key: value for key, value in out.items() if value is not None}


def _point_json(point: LoadPoint) -> dict[str, Any]:
    return {
        **asdict(point),
        "lone_quantiles": _rounded(point.lone_quantiles),
        "queued_quantiles": _rounded(point.queued_quantiles),
    }


def _served_json(served: ServedCheck) -> dict[str, Any]:
    out = asdict(served)
    out["saturation_quantiles"] = {name: _rounded(q) for name, q in served.saturation_quantiles.items()}
    out["load_points"] = {name: [_point_json(p) for p in points] for name, points in served.load_points.items()}
    return out


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
    if type(version) is not int or version not in READS_VERSIONS:
        raise AdvisorError(
            f"{where}: measurements file version {version!r} is not one this orchestrator reads (it reads versions "
            f"{', '.join(map(str, READS_VERSIONS))}): measure again with orchestrator bench --profile, or use the "
            "orchestrator that wrote it"
        )
    try:
        model = dict(raw["model"])
        if not model.get("name"):
            raise KeyError("model.name")
        types = tuple(_row(r, version) for r in raw["types"])
        served = _served(raw["served"], version) if raw.get("served") else None
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


def _spread(raw: Any, what: str) -> tuple[float, ...]:
    quantiles = tuple(float(q) for q in raw)
    if len(quantiles) < 2 or min(quantiles) < 0 or max(quantiles) <= 0:
        raise ValueError(f"{what} is not a spread (at least 2 quantiles, none negative)")
    return quantiles


def _row(raw: dict[str, Any], version: int) -> TypeMeasurement:
    if version < 2 and "saturation_quantiles" in raw:
        raise ValueError("saturation_quantiles in a version 1 file")
    if version < 3 and "load_points" in raw:
        raise ValueError(f"load_points in a version {version} file")
    spread = raw.get("saturation_quantiles")
    row = TypeMeasurement(
        **{
            **raw,
            "size_quantiles": tuple(float(q) for q in raw["size_quantiles"]),
            "saturation_quantiles": _spread(spread, "saturation_quantiles") if spread is not None else None,
            "load_points": tuple(_load_point(p, f"{raw.get('type')}.load_points") for p in raw.get("load_points", [])),
        }
    )
    if row.saturation_rps <= 0 or row.low_load_mean_ms <= 0 or len(row.size_quantiles) < 2:
        raise ValueError(f"type {row.type!r} has no usable numbers")
    return row


def _load_point(raw: dict[str, Any], what: str) -> LoadPoint:
    point = LoadPoint(
        **{
            **raw,
            "lone_quantiles": _spread(raw["lone_quantiles"], f"{what}.lone_quantiles"),
            "queued_quantiles": _spread(raw["queued_quantiles"], f"{what}.queued_quantiles"),
        }
    )
    if not 0 < point.utilisation <= 1 or point.lone_mean_ms <= 0 or point.queued_mean_ms <= 0:
        raise ValueError(f"{what} has no usable numbers (utilisation in (0, 1], positive means)")
    return point


def _served(raw: dict[str, Any], version: int) -> ServedCheck:
    spreads = raw.get("saturation_quantiles") or {}
    if version < 2 and spreads:
        raise ValueError("served.saturation_quantiles in a version 1 file")
    points = raw.get("load_points") or {}
    if version < 3 and points:
        raise ValueError(f"served.load_points in a version {version} file")
    return ServedCheck(
        **{
            **raw,
            "saturation_quantiles": {str(k): _spread(v, f"served.{k}") for k, v in dict(spreads).items()},
            "load_points": {
                str(k): tuple(_load_point(p, f"served.load_points.{k}") for p in v) for k, v in dict(points).items()
            },
        }
    )


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
