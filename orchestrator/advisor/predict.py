"""A layout's predicted capacity and p99 at a target rate, from the measurements.

Each instance becomes a FIFO server of the simulation: its service time is the inverse of its throughput at
saturation, and the rest of its low-load latency is a delay outside the server (so a lone request takes what it was
measured to take, and a saturated instance completes what it was measured to complete). A request served back to back
(it found its server busy) draws its service time from the spread measured at saturation when the file has one
(``Measurements.service_spread``: the served check's for the type, else the row's own), which is what a queue's tail
rests on (``simulation``'s docstring says why); without one (a version 1 file) it is sized like a lone request.
Where the served check measured the type's service times at loads below saturation (``load_points``, version 3),
those replace both: at the layout's utilisation (target over capacity) the lone and back-to-back services, their
spreads and the time outside the instance are interpolated between the measured loads (``load_points.at_utilisation``);
the back-to-back service is the saturated one plus its excess at that load, taken as a per-round cost shared by the
requests waiting (``ServerSpec.round_overhead_s``).
In-process measurements are turned into served ones with the file's served check (or the assumed ratio, which the
prediction then says).

A MIG profile that was not measured is *estimated* from a measured one of the same board, scaled by compute slices
(throughput in proportion; latency no better than the measured slice's, and proportionally worse on a smaller
slice, since a lone small request does not fill a bigger slice); failing that, from another board scaled by SMs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.advisor.load_points import LoadPoint, at_utilisation, describe_loads, scaled
from orchestrator.advisor.measurements import AdvisorError, Measurements, TypeMeasurement
from orchestrator.advisor.simulation import ServerSpec, SimParams, empirical_sizes, simulate
from orchestrator.hardware.mig_profile_table import BoardTable
from orchestrator.hardware.topology import MigProfile
from orchestrator.planning.mig_planner import capacity_for_sms
from orchestrator.planning.planner import REQUESTS_PER_THREAD

# Above this utilisation a queue's p99 depends on the run's length more than on the layout: call it saturated.
MAX_UTILISATION = 0.97
SIM_REQUESTS_MIN = 4000
SIM_REQUESTS_MAX = 12000


@dataclass(frozen=True)
class InstanceModel:
    """One instance as the simulation sees it (served numbers), and where its numbers come from."""

    type: str
    rps: float
    low_load_mean_ms: float
    low_load_p99_ms: float
    capacity: int
    quantiles: tuple[float, ...]
    basis: str = "measured"
    queued_quantiles: tuple[float, ...] | None = None
    spread_basis: str = "none measured: the low-load latencies"
    load_points: tuple[LoadPoint, ...] = ()

    @property
    def estimated(self) -> bool:
        return self.basis != "measured"

    def at_load(self, utilisation: float) -> LoadPoint | None:
        """The service times measured at load, interpolated to ``utilisation``; None when none were measured."""
        if not self.load_points:
            return None
        return at_utilisation(self.load_points, utilisation, 1000.0 / self.rps)

    def server(self, index: int, utilisation: float = 0.5) -> ServerSpec:
        service_s = 1.0 / self.rps
        point = self.at_load(utilisation)
        if point is not None:
            return ServerSpec(
                f"{self.type}#{index}",
                service_s,
                self.capacity,
                point.outside_ms / 1000,
                point.queued_quantiles,
                lone_service_s=point.lone_mean_ms / 1000,
                round_overhead_s=max(0.0, point.queued_mean_ms / 1000 - service_s),
            )
        return ServerSpec(
            f"{self.type}#{index}",
            service_s,
            self.capacity,
            max(0.0, self.low_load_mean_ms / 1000 - service_s),
            self.queued_quantiles,
        )


@dataclass(frozen=True)
class Prediction:
    """What a layout does at the target rate (``p99_ms`` is inf when it cannot carry the rate)."""

    instances: tuple[InstanceModel, ...]
    target_rps: float
    p99_target_ms: float
    capacity_rps: float
    p50_ms: float
    p99_ms: float
    busiest: float
    limit: str

    @property
    def utilisation(self) -> float:
        return self.target_rps / self.capacity_rps

    @property
    def meets(self) -> bool:
        return self.p99_ms <= self.p99_target_ms

    @property
    def headroom(self) -> float:
        return self.capacity_rps / self.target_rps - 1.0

    @property
    def estimated(self) -> bool:
        return any(i.estimated for i in self.instances)


def _served(row: TypeMeasurement, measurements: Measurements) -> tuple[float, float, float]:
    """(requests/s, low-load mean ms, low-load p99 ms) as served."""
    ratio, extra_ms, _ = measurements.served_ratio()
    if row.source != "in-process":
        ratio, extra_ms = 1.0, 0.0
    return row.saturation_rps * ratio, row.low_load_mean_ms + extra_ms, row.low_load_p99_ms + extra_ms


def _service_basis(
    row: TypeMeasurement, measurements: Measurements
) -> tuple[tuple[float, ...] | None, str, tuple[LoadPoint, ...]]:
    """The row's back-to-back spread, the words for where its service times come from, and its load points."""
    spread, basis = measurements.service_spread(row)
    points = measurements.load_points(row)
    if points:
        where = (
            "served" if measurements.served is not None and row.type in measurements.served.load_points else row.source
        )
        basis = f"{where}, at {describe_loads(points)} load"
    return spread, basis, points


def cpu_model(row: TypeMeasurement, measurements: Measurements) -> InstanceModel:
    """A CPU pool of the row's threads, with the planner's capacity for it."""
    rps, mean_ms, p99_ms = _served(row, measurements)
    spread, spread_basis, points = _service_basis(row, measurements)
    return InstanceModel(
        row.type,
        rps,
        mean_ms,
        p99_ms,
        REQUESTS_PER_THREAD * (row.threads or 1),
        row.size_quantiles,
        queued_quantiles=spread,
        spread_basis=spread_basis,
        load_points=points,
    )


def _scaled(
    profile: MigProfile, row: TypeMeasurement, measurements: Measurements, factor: float, basis: str
) -> InstanceModel:
    rps, mean_ms, p99_ms = _served(row, measurements)
    slower = max(1.0, 1.0 / factor)
    spread, spread_basis, points = _service_basis(row, measurements)  # spreads are over their mean: the same shape
    return InstanceModel(
        profile.name,
        rps * factor,
        mean_ms * slower,
        p99_ms * slower,
        capacity_for_sms(profile.sm_count),
        row.size_quantiles,
        basis,
        spread,
        spread_basis if factor == 1.0 else f"{spread_basis} (of {row.type})",
        tuple(scaled(point, queued=1.0 / factor, lone=slower) for point in points),
    )


def mig_model(board: BoardTable, profile: MigProfile, measurements: Measurements) -> InstanceModel:
    """The profile as measured on this board, else estimated (see the module docstring); raises AdvisorError when
    the file holds no GPU measurement at all."""
    same_board = [t for t in measurements.for_board(board.model) if t.kind == "mig" and t.compute_slices]
    exact = next((t for t in same_board if t.type == profile.name), None)
    if exact is not None:
        return _scaled(profile, exact, measurements, 1.0, "measured")
    if same_board:
        near = min(same_board, key=lambda t: (abs(math.log(profile.compute_slices / (t.compute_slices or 1))), t.type))
        factor = profile.compute_slices / (near.compute_slices or 1)
        return _scaled(profile, near, measurements, factor, f"estimated from {near.type} by compute slices")
    other = [t for t in measurements.types if t.kind in ("mig", "gpu") and t.sm_count]
    if other:
        near = min(other, key=lambda t: (abs(math.log(profile.sm_count / (t.sm_count or 1))), t.type))
        factor = profile.sm_count / (near.sm_count or 1)
        return _scaled(profile, near, measurements, factor, f"estimated from {near.board} {near.type} by SMs")
    raise AdvisorError(
        f"the measurements of {measurements.model_name} hold no GPU instance (only "
        f"{', '.join(t.type for t in measurements.types)}): run orchestrator bench --profile on a GPU machine, with "
        "at least one MIG slice or whole GPU, and pass that file"
    )


def _sim_requests(instances: int) -> int:
    return max(SIM_REQUESTS_MIN, min(SIM_REQUESTS_MAX, 400 * instances))


def predict(
    instances: Sequence[InstanceModel],
    target_rps: float,
    p99_target_ms: float,
    seed: int = 1,
    params: SimParams | None = None,
    requests: int | None = None,
) -> Prediction:
    """Simulate ``instances`` at ``target_rps`` behind our balancer (weights: the config's default)."""
    capacity = sum(i.rps for i in instances)
    if target_rps / capacity >= MAX_UTILISATION:
        limit = f"throughput: {capacity:,.1f} req/s at most, {target_rps / capacity:.0%} of it asked"
        return Prediction(tuple(instances), target_rps, p99_target_ms, capacity, math.inf, math.inf, 1.0, limit)
    utilisation = target_rps / capacity
    specs = [instance.server(n, utilisation) for n, instance in enumerate(instances)]
    at_load = instances[0].at_load(utilisation)
    sizes = empirical_sizes(at_load.lone_quantiles if at_load is not None else instances[0].quantiles)
    result = simulate(specs, target_rps, requests or _sim_requests(len(specs)), seed, sizes, params or SimParams())
    worst = max(range(len(specs)), key=lambda n: result.server_p99[n] if result.routed[n] else 0.0)
    busiest = max(result.utilisation)
    p99_ms = result.percentile(99) * 1000
    if busiest >= 0.8:  # from here on queueing, not a request's own time, sets the tail
        limit = f"throughput: the busiest instance is {busiest:.0%} busy at the target"
    else:
        limit = f"latency: {instances[worst].type} answers its share at p99 {result.server_p99[worst] * 1000:,.1f} ms"
    return Prediction(
        tuple(instances), target_rps, p99_target_ms, capacity, result.percentile(50) * 1000, p99_ms, busiest, limit
    )
