"""The study: which runs (policies x loads x seeds, plus the weight sweep), run in parallel, summarised over seeds.

A run is a pure function of its ``Task`` (policy, load, seed, request count, model), so the results do not depend
on how many worker processes ran them or in which order.
"""

from __future__ import annotations

import math
import multiprocessing
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from scripts.simulation.front_doors import arrival_dispersion, simulate_front_doors
from scripts.simulation.model import ModelParams, percentile, simulate
from scripts.simulation.policies import PolicySpec, make_policy

SEED_WEIGHTS = PolicySpec("weighted", 0.7, 0.3)
BASELINES = tuple(PolicySpec(name) for name in ("round_robin", "random", "power_of_two", "least_outstanding"))
# Throughput below this fraction of the offered rate means some queue grew without bound during the run: its
# latencies then depend on the run's length and mean "saturated" rather than a number to compare.
SATURATED_BELOW = 0.98


def sweep_specs(step: float = 0.1) -> list[PolicySpec]:
    """``weighted`` with load_weight 0, step, ..., 1 and queue_weight = 1 - load_weight."""
    count = round(1.0 / step)
    return [PolicySpec("weighted", round(i * step, 6), round(1.0 - i * step, 6)) for i in range(count + 1)]


@dataclass(frozen=True)
class Task:
    """One run to do."""

    spec: PolicySpec
    load: float
    seed: int
    requests: int
    params: ModelParams


@dataclass(frozen=True)
class RunSummary:
    """One run's numbers: latencies in milliseconds, rates in requests/s, ``shares`` the fraction per slice,
    ``dispersion`` the herding measure of ``front_doors.arrival_dispersion``."""

    spec: PolicySpec
    load: float
    seed: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float
    offered_rate: float
    shares: tuple[float, ...]
    dispersion: float = math.nan


@dataclass(frozen=True)
class Cell:
    """One policy at one load, over all seeds: means of the per-seed numbers, and the spread of the p99."""

    spec: PolicySpec
    load: float
    p50_ms: float
    p99_ms: float
    p99_min_ms: float
    p99_max_ms: float
    mean_ms: float
    throughput: float
    offered_rate: float
    shares: tuple[float, ...]
    seeds: int
    dispersion: float = math.nan

    @property
    def saturated(self) -> bool:
        """Whether the policy failed to keep up with the offered rate (see ``SATURATED_BELOW``)."""
        return self.throughput < SATURATED_BELOW * self.offered_rate


def run_task(task: Task) -> RunSummary:
    """Simulate one task and reduce it to its summary (in the worker, so only small results cross processes).

    One front door with shared reports runs ``model.simulate``; anything else ``front_doors.simulate_front_doors``
    (which gives the same run for the former, a little slower)."""
    spec = task.spec
    if spec.front_doors == 1 and spec.view == "reports" and not spec.near:
        result = simulate(make_policy(spec, task.seed), task.load, task.requests, task.seed, task.params)
    else:
        result = simulate_front_doors(spec, task.load, task.requests, task.seed, task.params)
    total = sum(result.routed) or 1
    return RunSummary(
        spec=task.spec,
        load=task.load,
        seed=task.seed,
        p50_ms=percentile(result.latencies, 50) * 1000.0,
        p99_ms=percentile(result.latencies, 99) * 1000.0,
        mean_ms=statistics.fmean(result.latencies) * 1000.0,
        throughput=result.throughput,
        offered_rate=result.offered_rate,
        shares=tuple(r / total for r in result.routed),
        dispersion=arrival_dispersion(result, warmup_fraction=task.params.warmup_fraction),
    )


def run_tasks(tasks: Sequence[Task], jobs: int, on_done: Callable[[], None] = lambda: None) -> list[RunSummary]:
    """Run every task on ``jobs`` processes (1: in this process), calling ``on_done`` after each."""
    # The weighted runs cost about 5x the others (the real balancer builds and sorts objects per request), and
    # many front doors cost more than one: starting them first keeps both processes busy to the end.
    ordered = sorted(tasks, key=lambda t: (t.spec.name != "weighted", -t.requests, -t.spec.front_doors))
    results: list[RunSummary] = []
    if jobs <= 1 or len(ordered) <= 1:
        for task in ordered:
            results.append(run_task(task))
            on_done()
        return results
    with multiprocessing.get_context("spawn").Pool(processes=jobs) as pool:
        for summary in pool.imap_unordered(run_task, ordered, chunksize=1):
            results.append(summary)
            on_done()
    return results


def summarise(runs: Iterable[RunSummary]) -> dict[tuple[PolicySpec, float], Cell]:
    """Group runs by (policy, load) and average over seeds."""
    groups: dict[tuple[PolicySpec, float], list[RunSummary]] = {}
    for run in runs:
        groups.setdefault((run.spec, run.load), []).append(run)
    cells: dict[tuple[PolicySpec, float], Cell] = {}
    for (spec, load), group in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0].label)):
        p99s = [r.p99_ms for r in group]
        cells[(spec, load)] = Cell(
            spec=spec,
            load=load,
            p50_ms=statistics.fmean(r.p50_ms for r in group),
            p99_ms=statistics.fmean(p99s),
            p99_min_ms=min(p99s),
            p99_max_ms=max(p99s),
            mean_ms=statistics.fmean(r.mean_ms for r in group),
            throughput=statistics.fmean(r.throughput for r in group),
            offered_rate=statistics.fmean(r.offered_rate for r in group),
            shares=tuple(statistics.fmean(r.shares[i] for r in group) for i in range(len(group[0].shares))),
            seeds=len(group),
            dispersion=statistics.fmean(r.dispersion for r in group),
        )
    return cells


def _swept(cells: dict[tuple[PolicySpec, float], Cell], loads: Sequence[float]) -> list[PolicySpec]:
    """The weighted policies run at every one of ``loads``."""
    weighted = {spec for spec, _ in cells if spec.name == "weighted"}
    return sorted((s for s in weighted if all((s, load) in cells for load in loads)), key=lambda s: s.load_weight)


def relative_p99(cells: dict[tuple[PolicySpec, float], Cell], spec: PolicySpec, loads: Sequence[float]) -> float:
    """Geometric mean over ``loads`` of ``spec``'s p99 divided by the best swept weights' p99 there (1.0 = best).

    Relative, so that 95% load (where every p99 is larger) does not outvote 80%; geometric, so that 10% worse at
    one load and 10% better at the other cancel out.
    """
    swept = _swept(cells, loads)
    logs = [math.log(cells[(spec, load)].p99_ms / min(cells[(s, load)].p99_ms for s in swept)) for load in loads]
    return math.exp(statistics.fmean(logs))


def best_weights(cells: dict[tuple[PolicySpec, float], Cell], loads: Sequence[float]) -> PolicySpec:
    """The swept weights with the lowest ``relative_p99`` over ``loads`` (ties: the smaller load weight)."""
    swept = _swept(cells, loads)
    if not swept:
        raise ValueError("no weighted policy was run at every sweep load")
    return min(swept, key=lambda spec: (relative_p99(cells, spec, loads), spec.load_weight))


def plan_first_pass(
    loads: Sequence[float], sweep_loads: Sequence[float], seeds: int, requests: int, params: ModelParams
) -> list[Task]:
    """Baselines and the seed's weights at every load, the whole sweep at the sweep loads."""
    pairs: set[tuple[PolicySpec, float]] = set()
    for load in loads:
        pairs.update((spec, load) for spec in (*BASELINES, SEED_WEIGHTS))
    for load in sweep_loads:
        pairs.update((spec, load) for spec in sweep_specs())
    return [
        Task(spec, load, seed, requests, params)
        for spec, load in sorted(pairs, key=lambda pair: (pair[1], pair[0].label))
        for seed in range(1, seeds + 1)
    ]


def plan_second_pass(
    best: PolicySpec,
    loads: Sequence[float],
    done: Iterable[tuple[PolicySpec, float]],
    seeds: int,
    requests: int,
    params: ModelParams,
) -> list[Task]:
    """The best weights at the loads the sweep did not cover."""
    have = set(done)
    return [
        Task(best, load, seed, requests, params)
        for load in loads
        if (best, load) not in have
        for seed in range(1, seeds + 1)
    ]


def plan_front_doors(
    variants: Sequence[PolicySpec],
    counts: Sequence[int],
    views: Sequence[str],
    loads: Sequence[float],
    seeds: int,
    requests: int,
    params: ModelParams,
) -> list[Task]:
    """Each variant (its ``front_doors`` and ``view`` replaced) with every count of front doors, view and load."""
    return [
        Task(replace(variant, front_doors=count, view=view), load, seed, requests, params)
        for view in views
        for variant in variants
        for load in loads
        for count in counts
        for seed in range(1, seeds + 1)
    ]
