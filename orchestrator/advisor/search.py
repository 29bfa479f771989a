"""The cheapest layouts that meet a target: fewest GPUs, then the most headroom (then the lowest p99).

Candidates on N GPUs: every valid one-GPU layout on all N GPUs alike, and N-1 GPUs of one of the highest-capacity
layouts plus one GPU of any layout (so that the last GPU can be cut finer or coarser than the rest). That covers the
layouts people deploy and keeps the search to a few dozen simulations; mixing more than two kinds of GPU layout is
not tried. N starts where the best layout's throughput could carry the target and grows until some candidate meets
the p99, or ``max_gpus``. A target is per model (``Target.model``): with several models each gets its own slices,
which this version searches one model at a time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from orchestrator.advisor.layouts import GpuLayout, gpu_layouts
from orchestrator.advisor.measurements import AdvisorError, Measurements
from orchestrator.advisor.predict import MAX_UTILISATION, InstanceModel, Prediction, mig_model, predict
from orchestrator.hardware.mig_profile_table import BoardTable

TOP_LAYOUTS = 4  # layouts tried as the N-1 "bulk" GPUs of a mixed candidate
MAX_SIMULATIONS = 40
# A short run screens the candidates (a p99 within 10% of the bound passes), a longer one confirms the best.
SCREEN_REQUESTS = 2000
SCREEN_MARGIN = 1.1


@dataclass(frozen=True)
class Target:
    """What one model must sustain: requests/s and the p99 latency bound."""

    model: str
    rps: float
    p99_ms: float


@dataclass(frozen=True)
class Choice:
    """A candidate: its GPUs (one layout each) and its prediction."""

    gpus: tuple[GpuLayout, ...]
    prediction: Prediction

    @property
    def name(self) -> str:
        groups: dict[str, int] = {}
        for layout in self.gpus:
            groups[layout.name] = groups.get(layout.name, 0) + 1
        return " | ".join(f"{count} x [{name}]" for name, count in groups.items())


@dataclass(frozen=True)
class Advice:
    """The chosen layouts (best first; empty when none meets), the best effort otherwise, and how the search went."""

    target: Target
    board: BoardTable
    choices: tuple[Choice, ...]
    best_effort: Choice | None
    gpus_for_throughput: int
    max_gpus: int
    simulations: int
    seconds: float
    models: dict[str, InstanceModel]
    reasoning: tuple[str, ...]


def _instances(gpus: tuple[GpuLayout, ...], models: dict[str, InstanceModel]) -> list[InstanceModel]:
    return [models[p.name] for layout in gpus for p in layout.profiles]


def _capacity(layout: GpuLayout, models: dict[str, InstanceModel]) -> float:
    return sum(models[p.name].rps for p in layout.profiles)


def advise(
    target: Target,
    board: BoardTable,
    measurements: Measurements,
    needed_mb: int | None = None,
    max_gpus: int = 32,
    top: int = 3,
) -> Advice:
    """Search ``board``'s layouts for ``target``; raises AdvisorError when no profile can hold the model or the
    measurements hold no GPU."""
    started = time.perf_counter()
    if target.rps <= 0 or target.p99_ms <= 0:
        raise AdvisorError("--target-rps and --p99-ms must be positive")
    layouts = gpu_layouts(board, needed_mb)
    if not layouts:
        raise AdvisorError(f"no {board.model} profile has the {needed_mb} MiB the model needs")
    models = {p.name: mig_model(board, p, measurements) for layout in layouts for p in layout.profiles}
    by_capacity = sorted(layouts, key=lambda layout: (-_capacity(layout, models), layout.name))
    best_per_gpu = _capacity(by_capacity[0], models)
    needed = math.ceil(target.rps / (best_per_gpu * MAX_UTILISATION))
    reasoning = [
        f"{board.model}: {len(layouts)} valid layouts per GPU (profile table and placement rules of mig plan)",
        *(
            f"{name}: {m.rps:,.1f} req/s at saturation, {m.low_load_mean_ms:,.1f} ms alone (p99 "
            f"{m.low_load_p99_ms:,.1f}), {m.basis}; service spread under load: {m.spread_basis}"
            for name, m in sorted(models.items(), key=lambda item: -item[1].rps)
        ),
        f"best one-GPU layout {by_capacity[0].name}: {best_per_gpu:,.1f} req/s, so at least {needed} GPU(s) for "
        f"{target.rps:,.0f} req/s at {MAX_UTILISATION:.0%} utilisation",
    ]
    simulations = 0
    best_effort: Choice | None = None
    fastest = min(models.values(), key=lambda m: m.low_load_p99_ms)
    if fastest.low_load_p99_ms > target.p99_ms:  # more GPUs shorten queues, not a lone request's own time
        gpus = (by_capacity[0],) * min(max(needed, 1), max_gpus)
        best_effort = Choice(gpus, predict(_instances(gpus, models), target.rps, target.p99_ms))
        reasoning.append(f"{fastest.type}, the fastest instance, takes p99 {fastest.low_load_p99_ms:,.1f} ms alone")
        return Advice(
            target, board, (), best_effort, needed, max_gpus, 1, time.perf_counter() - started, models, tuple(reasoning)
        )
    for count in range(max(1, needed), max_gpus + 1):
        candidates = _candidates(count, layouts, by_capacity[:TOP_LAYOUTS], models, target.rps)
        screened: list[Choice] = []
        for gpus in candidates:
            if simulations >= MAX_SIMULATIONS:
                break
            if len(screened) >= 2 * top and _capacity_of(gpus, models) < screened[top - 1].prediction.capacity_rps:
                break  # the rest have less headroom than the ones already passing
            prediction = predict(_instances(gpus, models), target.rps, target.p99_ms, requests=SCREEN_REQUESTS)
            simulations += 1
            choice = Choice(gpus, prediction)
            if prediction.p99_ms <= target.p99_ms * SCREEN_MARGIN:
                screened.append(choice)
            elif best_effort is None or prediction.p99_ms < best_effort.prediction.p99_ms:
                best_effort = choice
        screened.sort(key=lambda c: (-round(c.prediction.headroom, 2), c.prediction.p99_ms))
        met: list[Choice] = []
        for choice in screened[: 2 * top]:  # confirmed on a longer run
            confirmed = Choice(choice.gpus, predict(_instances(choice.gpus, models), target.rps, target.p99_ms))
            simulations += 1
            if confirmed.prediction.meets:
                met.append(confirmed)
            elif best_effort is None or confirmed.prediction.p99_ms < best_effort.prediction.p99_ms:
                best_effort = confirmed
        if met:
            met.sort(key=lambda c: (-round(c.prediction.headroom, 2), c.prediction.p99_ms))
            reasoning.append(
                f"{count} GPU(s): {len(met)} of {len(candidates)} candidates meet p99 "
                f"{target.p99_ms:g} ms ({simulations} simulations)"
            )
            return Advice(
                target,
                board,
                tuple(met[:top]),
                None,
                needed,
                max_gpus,
                simulations,
                time.perf_counter() - started,
                models,
                tuple(reasoning),
            )
        reasoning.append(f"{count} GPU(s): none of {len(candidates)} candidates meets p99 {target.p99_ms:g} ms")
        if simulations >= MAX_SIMULATIONS:
            break
    return Advice(
        target,
        board,
        (),
        best_effort,
        needed,
        max_gpus,
        simulations,
        time.perf_counter() - started,
        models,
        tuple(reasoning),
    )


def _capacity_of(gpus: tuple[GpuLayout, ...], models: dict[str, InstanceModel]) -> float:
    return sum(_capacity(layout, models) for layout in gpus)


def _candidates(
    count: int, layouts: list[GpuLayout], bulk: list[GpuLayout], models: dict[str, InstanceModel], rps: float
) -> list[tuple[GpuLayout, ...]]:
    """Layouts on ``count`` GPUs whose throughput can carry ``rps``, most capacity first."""
    seen: set[tuple[str, ...]] = set()
    out: list[tuple[GpuLayout, ...]] = []
    for same in layouts:
        gpus = (same,) * count
        seen.add(tuple(g.name for g in gpus))
        out.append(gpus)
    for main in bulk if count > 1 else []:
        for last in layouts:
            gpus = (main,) * (count - 1) + (last,)
            key = tuple(sorted(g.name for g in gpus))
            if key not in seen:
                seen.add(key)
                out.append(gpus)
    fit = [g for g in out if sum(_capacity(layout, models) for layout in g) * MAX_UTILISATION > rps]
    return sorted(fit, key=lambda g: -sum(_capacity(layout, models) for layout in g))


def best_effort_line(advice: Advice) -> str:
    """One line for a target no layout meets: the best it can do, and how many GPUs the target needs."""
    target = advice.target
    head = f"no {advice.board.model} layout meets {target.rps:,.0f} req/s at p99 {target.p99_ms:g} ms"
    best = advice.best_effort
    if best is None:
        return (
            f"{head} on up to {advice.max_gpus} GPU(s) (--max-gpus): the target needs at least "
            f"{advice.gpus_for_throughput} GPU(s) for its throughput"
        )
    fastest = min(best.prediction.instances, key=lambda i: i.low_load_p99_ms)
    p99 = "saturated" if math.isinf(best.prediction.p99_ms) else f"p99 {best.prediction.p99_ms:,.1f} ms"
    if fastest.low_load_p99_ms > target.p99_ms:
        needs = (
            f"no number of GPUs is enough: one request alone takes p99 {fastest.low_load_p99_ms:,.1f} ms even on "
            f"{fastest.type}; raise --p99-ms or send smaller requests"
        )
    else:
        needs = f"the target needs at least {advice.gpus_for_throughput} GPU(s) for its throughput alone"
    return (
        f"{head}: the best is {len(best.gpus)} GPU(s) of {best.name} with {p99} at "
        f"{best.prediction.utilisation:.0%} utilisation; {needs}"
    )
