"""``orchestrator bench --profile``: measure every instance type present on this machine and build the file.

Types present: each MIG profile with a free slice, each whole GPU without MIG, and (no usable GPU) CPU pools of the
given thread counts. Each type is measured in-process, in a pinned child (``profile_child``), one after another so
that they do not share cores or a GPU. Why in-process and not through ``up``: ``up`` cannot aim load at one
instance, starting it costs 12-30 s per type, and the served path's cost (front door, lane, Ray's processes) is one
factor for the whole service, not per type. The optional served check measures that factor once: one ``up`` over
the machine's pools, saturated and then probed at low load, against the sum of the in-process numbers. Without it the
file says so and the advisor assumes the README's measured ratio (docs/advisor.md compares both with real runs).

The served check also records, for each CPU type, the service-time spread at saturation as served: one ``up`` per
type, saturated, its completions split by the instance that answered (``spread.departure_spread``). A queue's tail
rests on that spread, and the served path is where a replica shares the CPU with the front door. A child that reports
its own saturated completions (``saturation_done_s``, seconds) gets the same spread in-process, on its row.

And, since version 3, each CPU type's service times at loads below saturation: open-loop Poisson runs at
``LOAD_FRACTIONS`` of the served saturation rate just measured, read by ``load_points`` (a request that found its
instance idle, one that waited). The prediction uses them in place of the spread at saturation, whose closed loop of
8 clients makes rounds longer and more uneven than a 50-80 % load does (docs/advisor.md).
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from orchestrator.advisor.load_points import LoadPoint, RequestRecord, point_from_records
from orchestrator.advisor.measurements import AdvisorError, Measurements, ServedCheck, TypeMeasurement
from orchestrator.advisor.profile_child import measure_in_child
from orchestrator.advisor.spread import departure_spread
from orchestrator.advisor.workload import Workload
from orchestrator.hardware.mig_profile_table import board_for
from orchestrator.hardware.topology import Topology

if TYPE_CHECKING:
    from orchestrator.advisor.loadgen import LoadResult

QUANTILES = 21
# Requests of the served check's saturated run, at least: its departures are read for the spread at saturation, and
# 21 quantiles want a few hundred service times (~30 s at 15 req/s).
SPREAD_REQUESTS = 400
# The open-loop loads (over the served saturation rate) the service times are measured at, and requests per load:
# around the 50-80 % a layout is usually sized for (~1.7 min a type at 15 req/s). 400 requests: behind the balancer
# few of 2 pools' requests wait at 40 % (a quarter at 50 %), and a spread wants at least 20 of each kind.
LOAD_FRACTIONS = (0.4, 0.7)
LOAD_REQUESTS = 400


@dataclass(frozen=True)
class InstanceType:
    """One type to measure: the config ``type`` it is planned as, and for CPU pools the threads per pool."""

    type: str
    kind: str
    board: str | None = None
    threads: int | None = None
    compute_slices: int | None = None

    @property
    def label(self) -> str:
        return f"cpu-{self.threads}t" if self.kind == "cpu" else self.type


@dataclass(frozen=True)
class ProfileSettings:
    """How much to measure: requests at low load and at saturation, saturating clients, pool sizes on CPU."""

    low_load: int = 60
    saturation: int = 120
    clients: int = 8
    pool_threads: tuple[int, ...] = (1,)
    timeout_s: float = 600.0


def types_present(topology: Topology, pool_threads: tuple[int, ...]) -> list[InstanceType]:
    """Each MIG profile with a free slice and each whole GPU (one of each board), else CPU pools that fit here."""
    found: dict[tuple[str, str | None], InstanceType] = {}
    for gpu in topology.gpus:
        table = board_for(gpu.pci_device_id)
        board = table.model if table is not None else gpu.name
        if gpu.mig_enabled and not gpu.mig_reset_pending:
            for mig in gpu.slices:
                profile = gpu.profile(mig.profile)
                if mig.busy_reason is None:
                    slices = profile.compute_slices if profile is not None else None
                    found.setdefault((mig.profile, board), InstanceType(mig.profile, "mig", board, None, slices))
        elif not gpu.mig_pending_enabled:
            found.setdefault(("gpu", board), InstanceType("gpu", "gpu", board, None, None))
    if found:
        return list(found.values())
    cores = len(topology.cpu.cores)
    return [InstanceType("cpu", "cpu", None, t) for t in pool_threads if t <= cores]


def type_config(base: dict[str, Any], base_dir: Path, kind: InstanceType, pools: int = 1) -> dict[str, Any]:
    """The user's config with one instance of ``kind`` (``pools`` of them for the served check), served locally."""
    config = {k: v for k, v in base.items() if k not in ("mig_instances", "ray", "cpu_pools")}
    model = dict(config.get("model") or {})
    if model.get("path") and not Path(model["path"]).is_absolute():  # the temporary file lives elsewhere
        model["path"] = str((base_dir / model["path"]).resolve())
    if model:
        config["model"] = model
    first = (base.get("mig_instances") or [{}])[0]
    batching = {k: first[k] for k in ("batch_size", "max_concurrency") if k in first}
    config["mig_instances"] = [{"name": f"profile-{n}", "type": kind.type, **batching} for n in range(pools)]
    if kind.kind == "cpu":
        config["cpu_pools"] = {"count": pools, "threads_per_pool": kind.threads}
    return config


def _row(kind: InstanceType, child: dict[str, Any], settings: ProfileSettings) -> TypeMeasurement:
    low = sorted(child["low_load_s"])
    mean = statistics.fmean(low)
    n = len(low) - 1
    quantiles = tuple(low[round(n * q / (QUANTILES - 1))] / mean for q in range(QUANTILES))
    done = child.get("saturation_done_s")  # in-process completions at saturation, when the child reports them
    spread = departure_spread([(t, kind.label) for t in done], settings.clients) if done else None
    points = _child_load_points(kind, child)
    return TypeMeasurement(
        type=kind.label,
        kind=kind.kind,
        board=kind.board,
        threads=child["threads"] if kind.kind == "cpu" else None,
        compute_slices=kind.compute_slices,
        sm_count=child.get("sm_count"),
        memory_mb=child.get("memory_mb"),
        saturation_rps=round(child["saturation_rps"], 3),
        texts_per_s=round(child["texts_per_s"], 2),
        low_load_mean_ms=round(mean * 1000, 3),
        low_load_p50_ms=round(low[n // 2] * 1000, 3),
        low_load_p99_ms=round(low[min(n, round(n * 0.99))] * 1000, 3),
        size_quantiles=quantiles,
        requests={"low_load": len(low), "saturation": settings.saturation, "clients": settings.clients},
        saturation_quantiles=spread[0] if spread else None,
        load_points=points,
    )


def _child_load_points(kind: InstanceType, child: dict[str, Any]) -> tuple[LoadPoint, ...]:
    """The child's in-process open loops (``at_load``) as load points (too short ones left out)."""
    points = []
    for run in child.get("at_load") or ():
        records = [RequestRecord(kind.label, *values) for values in run["records"]]
        point = point_from_records(records, run["rate"] / child["saturation_rps"])
        if point is not None:
            points.append(point)
    return tuple(points)


def profile_machine(
    base_config: Path,
    topology: Topology,
    workload: Workload,
    settings: ProfileSettings,
    on_type: Callable[[str], None] = lambda _: None,
) -> Measurements:
    """Measure every type present; raises AdvisorError (a config that does not load, a child that fails)."""
    try:
        base = yaml.safe_load(base_config.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise AdvisorError(f"{base_config}: cannot read the config to measure with: {error}") from None
    kinds = types_present(topology, settings.pool_threads)
    if not kinds:
        raise AdvisorError(f"nothing to measure: no free MIG slice, whole GPU or CPU pool of {settings.pool_threads}")
    requests = workload.requests(max(settings.low_load, settings.saturation, LOAD_REQUESTS) + 3)
    rows: list[TypeMeasurement] = []
    facts: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            on_type(kind.label)
            path = Path(tmp) / f"{kind.label}.yaml"
            path.write_text(yaml.safe_dump(type_config(base, base_config.parent, kind)))
            # On a GPU the served check does not run: the child measures the service times at load itself.
            fractions = LOAD_FRACTIONS if kind.kind != "cpu" else ()
            child = measure_in_child(
                path,
                requests,
                settings.low_load,
                settings.saturation,
                settings.clients,
                settings.timeout_s,
                fractions,
                LOAD_REQUESTS,
            )
            rows.append(_row(kind, child, settings))
            facts = child
    model_section = base.get("model") or {}
    name, memory_mb = _model_facts(base_config)
    return Measurements(
        model={
            "name": name,
            "dimensions": facts["dimensions"],
            "backend": facts["backend"],
            "memory_mb": memory_mb,
            "package": model_section.get("package"),
            "path": model_section.get("path"),
        },
        machine={
            "hostname": platform.node(),
            "cpus": os.cpu_count(),
            "taken_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "gpus": sorted({g.name for g in topology.gpus}),
        },
        workload={**workload.describe(), "tokens_per_text_measured": round(facts["tokens_per_text"], 1)},
        method={
            "how": "in-process: one pinned child per type, built by workers.assembly.build_instance, driven "
            "through EmbeddingService.embed (tokenising, batcher, backend); no HTTP, no Ray",
            "low_load": "one request at a time",
            "saturation": f"{settings.clients} requests always outstanding",
        },
        types=tuple(rows),
    )


def _model_facts(config: Path) -> tuple[str, int]:
    """The name ``up`` would serve the model under, and the GPU memory it needs in 16 bits (the planner's rule)."""
    from orchestrator.config import load_config

    loaded = load_config(config)
    return loaded.model_name, loaded.footprint.gpu_memory_mb(2)


@dataclass(frozen=True)
class _ServedRun:
    pools: int
    clients: int
    saturated: LoadResult
    low: LoadResult
    points: tuple[LoadPoint, ...]


def _served_run(
    row: TypeMeasurement,
    base: dict[str, Any],
    base_config: Path,
    bodies: list[list[str]],
    load_bodies: list[list[str]],
    saturated: int,
    clients: int,
) -> _ServedRun:
    """One ``up`` over as many pools of ``row``'s threads as the cores hold: warmed, saturated (at least two
    requests waiting per pool), then, for the served ratio, one request at a time, then open-loop at each of
    ``LOAD_FRACTIONS`` of the saturated rate."""
    from orchestrator.advisor.loadgen import closed_loop, free_port, running_service

    threads = row.threads or 1
    pools = max(1, (os.cpu_count() or 1) // threads)
    config = type_config(base, base_config.parent, InstanceType("cpu", "cpu", None, threads), pools)
    port = free_port()
    config["server"] = {**(config.get("server") or {}), "port": port, "host": "127.0.0.1"}
    url = f"http://127.0.0.1:{port}"
    clients = max(clients, 2 * pools)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "served.yaml"
        path.write_text(yaml.safe_dump(config))
        with running_service(path, url):
            closed_loop(url, bodies[:8], 2)  # warm every replica
            result = closed_loop(url, bodies[:saturated], clients)
            low = closed_loop(url, bodies[: min(saturated, 40)], 1)
            points = served_load_points(url, load_bodies, result.throughput_rps)
    return _ServedRun(pools, clients, result, low, points)


def served_check(
    measurements: Measurements, base_config: Path, workload: Workload, requests: int, clients: int
) -> ServedCheck:
    """Run ``up`` over as many pools of each CPU type as the cores hold: the first type's saturation and low-load
    latency against its in-process numbers give the served ratio; every type's saturated completions give its
    service-time spread as served. Only for CPU pools (GPU slices are served by the same code path)."""
    rows = [t for t in measurements.types if t.kind == "cpu" and t.threads is not None]
    if not rows:
        raise AdvisorError("the served check runs on CPU pools only: no CPU pool was measured")
    base = yaml.safe_load(base_config.read_text()) or {}
    saturated = max(requests, SPREAD_REQUESTS)
    bodies = workload.requests(saturated + 20, seed=33)
    load_bodies = workload.requests(LOAD_REQUESTS, seed=34)
    runs = {row.type: _served_run(row, base, base_config, bodies, load_bodies, saturated, clients) for row in rows}
    row, first = rows[0], runs[rows[0].type]
    ratio = first.saturated.throughput_rps / (first.pools * row.saturation_rps)
    extra_ms = statistics.median(first.low.latencies_s) * 1000 - row.low_load_p50_ms
    spreads: dict[str, tuple[float, ...]] = {}
    load_points: dict[str, tuple[LoadPoint, ...]] = {}
    notes: list[str] = []
    for name, run in runs.items():
        spread = departure_spread(run.saturated.completions, run.clients)
        if spread is not None:
            spreads[name] = spread[0]
        if run.points:
            load_points[name] = run.points
        notes.append(
            f"{name}: {run.pools} pool(s), {run.saturated.throughput_rps:.2f}/s served from {run.clients} clients, "
            + (f"spread from {spread[1]} service times" if spread else "no spread (too few completions)")
            + "".join(f", at {p.utilisation:.0%} load {p.lone} lone and {p.queued} queued services" for p in run.points)
        )
    return ServedCheck(
        ratio=round(ratio, 3),
        extra_ms=round(max(extra_ms, 0.0), 2),
        how=f"orchestrator up with {first.pools} pool(s) of {row.threads} thread(s): {saturated} requests from "
        f"{first.clients} clients ({first.saturated.throughput_rps:.2f}/s served vs {first.pools} x "
        f"{row.saturation_rps:.2f}/s in-process), then one at a time; at saturation per type: " + "; ".join(notes),
        saturation_quantiles=spreads,
        load_points=load_points,
    )


def served_load_points(url: str, bodies: list[list[str]], saturated_rps: float) -> tuple[LoadPoint, ...]:
    """Open-loop runs against a served endpoint at each of ``LOAD_FRACTIONS`` of ``saturated_rps``, read as load
    points (a run with too few lone or queued services left out)."""
    from orchestrator.advisor.loadgen import open_loop

    points = []
    for n, fraction in enumerate(LOAD_FRACTIONS):
        result = open_loop(url, bodies, fraction * saturated_rps, seed=41 + n)
        point = point_from_records(result.records, result.offered_rps / saturated_rps)
        if point is not None:
            points.append(point)
    return tuple(points)
