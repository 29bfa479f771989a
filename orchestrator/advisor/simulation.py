"""The queueing simulation the advisor checks p99 with: FIFO servers, Poisson arrivals, our real balancer.

This is the core of the balancer study (``scripts/simulation/model.py``, docs/balancer-study.md) made importable
and given measured servers instead of SM-proportional ones: each instance is one FIFO server with its own mean
service time (the measured saturation throughput's inverse) and capacity (the balancer's normaliser, as the planner
sizes it), plus a delay outside the server (what a request spends that does not occupy the instance: the served
path, and at low load the batching efficiency the saturated service time does not have). Routing is
``orchestrator.balancer.rank`` over a stale reported load and a fresh outstanding count, as in the study. With the
study's servers, sizes and weights it gives the study's numbers exactly (tests/unit/test_advisor_simulation.py).

Sizes: each request draws a size with mean 1 (log-normal with a cv, or the measured low-load latency distribution)
and takes ``size x delay`` outside its server. On the server it takes ``size x mean service`` when it finds the server
free. When it finds it busy and the server has a measured back-to-back spread (``ServerSpec.queued_quantiles``: at
saturation, or at the load being simulated), it takes ``mean service x`` a draw from that spread instead; without
one, ``size x mean service`` as well. A lone request's mean can differ (``lone_service_s``).

Why two service distributions (an M/G/1 queue with exceptional first service, Welch 1964): a request that finds its
server free is served as a lone request is, which is what the low-load measurement times. A request that finds it busy
starts the moment the one before it finishes, back to back, and back-to-back service is what the saturated
measurement times: there the gap between two completions of an always-busy server is the service time (the departure
process of a saturated queue is its service process, ``spread.py``), with the spread load brings (unequal batches,
tokenising on the event loop, the front door's share of the CPU) that a lone request never meets. Both have the
saturated mean by default, so capacity is unchanged; only the variance, which sets a queue's tail, comes from where
it was measured. Measured at the load being simulated (``load_points``), each has its own mean as well. For one
server with Poisson arrivals at rate ``lambda`` the mean wait is then ``lambda E[S^2] / (2 (1 - rho)) + lambda
(E[S0^2] - E[S^2]) / (2 (1 - rho + rho0))`` (S0 lone, S back to back, ``rho = lambda E[S]``, ``rho0 = lambda
E[S0]``; the Pollaczek-Khinchine formula when they are alike), which tests/unit/test_advisor_simulation.py checks.

Rounds: the batcher serves what waits in rounds, and a back-to-back service costs more than the saturated one by
about a fixed amount per round (the previous answers are encoded and sent, the next requests received and
tokenised, on the cores computing the round), which the requests of a round share; measured on 2 cores, 1 pool of 2
threads: 94, 87, 86 and 76 ms a request in rounds of 1, 2, 3 and 4 against 72 at saturation (docs/advisor.md). A
request that finds ``n`` requests at its server is taken to share its round with as many (``round_overhead_s``).
That keeps a FIFO server (a request's finish is known when it is routed) while the per-request cost falls as queues
grow, as the real one's does: at 80 % load a back-to-back service measured at 66 % would otherwise exceed the
capacity the saturated one gives.

Completions follow the Lindley recursion (a FIFO request's finish time is known when it is routed); load reports are
heap events. Deterministic per seed: arrivals, sizes, report phases and back-to-back service times have their own
streams (so a run without a saturation spread draws exactly what it drew before there was one).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from orchestrator import balancer

SizeSampler = Callable[[random.Random], Callable[[], float]]


@dataclass(frozen=True)
class ServerSpec:
    """One instance: mean service seconds (size 1), the balancer's capacity, and seconds outside per size 1.

    ``queued_quantiles``: evenly spaced quantiles (over their mean) of the service time of a request served back to
    back; None: such a request takes ``size x mean_service_s`` like a lone one. ``lone_service_s``: the mean service
    of a request that finds the server free, when measured at the load being simulated (``load_points``); None:
    ``mean_service_s``. ``round_overhead_s``: what a back-to-back service costs beyond ``mean_service_s``, once per
    round of the batcher and shared by the round's requests: a request that finds ``n`` requests at its server takes
    ``mean_service_s + round_overhead_s / n`` (times its draw).
    """

    name: str
    mean_service_s: float
    capacity: float
    delay_s: float = 0.0
    queued_quantiles: tuple[float, ...] | None = None
    lone_service_s: float | None = None
    round_overhead_s: float = 0.0


@dataclass(frozen=True)
class SimParams:
    """Router and measurement settings (the study's defaults; weights: the config's default 0.2/0.8)."""

    stats_period_s: float = 0.5
    load_window_s: float = 2.0
    warmup_fraction: float = 0.1
    weights: balancer.Weights = balancer.Weights()


@dataclass(frozen=True)
class SimResult:
    """Latencies (seconds, sorted, warm-up excluded), throughput between the first measured and the last arrival,
    the offered rate, requests routed, busy fraction and p99 latency (seconds) per server."""

    latencies: list[float]
    throughput: float
    offered_rate: float
    routed: list[int]
    utilisation: list[float]
    server_p99: list[float]

    def percentile(self, q: float) -> float:
        return percentile(self.latencies, q)


def lognormal_sizes(cv: float) -> SizeSampler:
    """Sizes with mean 1 and coefficient of variation ``cv`` (the study's default model)."""
    sigma = math.sqrt(math.log1p(cv**2))
    mu = -sigma * sigma / 2.0

    def sampler(rng: random.Random) -> Callable[[], float]:
        return lambda: rng.lognormvariate(mu, sigma)

    return sampler


def empirical_sizes(quantiles: Sequence[float]) -> SizeSampler:
    """Sizes drawn from evenly spaced quantiles (0..100%, linearly interpolated), rescaled to mean 1."""
    points = sorted(quantiles)
    steps = len(points) - 1
    # The mean of the piecewise-linear inverse CDF: the trapezoid rule over the quantiles.
    mean = sum((points[i] + points[i + 1]) / 2 for i in range(steps)) / steps
    scaled = [p / mean for p in points]

    def sampler(rng: random.Random) -> Callable[[], float]:
        def draw() -> float:
            position = rng.random() * steps
            low = int(position)
            return scaled[low] + (scaled[min(low + 1, steps)] - scaled[low]) * (position - low)

        return draw

    return sampler


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of sorted values, linearly interpolated (NaN when empty)."""
    if not sorted_values:
        return math.nan
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


class _Server:
    """A FIFO single server and the busy fraction it reports (calls in non-decreasing time order)."""

    __slots__ = ("key", "spec", "reported_load", "routed", "_finishes", "_free_at", "_start", "_busy", "_history")

    def __init__(self, key: int, spec: ServerSpec, params: SimParams) -> None:
        self.key = key
        self.spec = spec
        self.reported_load = 0.0
        self.routed = 0
        self._finishes: deque[float] = deque()
        self._free_at = 0.0
        self._start = 0.0
        self._busy = 0.0
        periods = max(1, round(params.load_window_s / params.stats_period_s))
        self._history: deque[float] = deque([0.0] * (periods + 1), maxlen=periods + 1)

    def busy_at(self, t: float) -> bool:
        return self._free_at > t

    def busy_until(self, t: float) -> float:
        return self._busy + max(0.0, min(t, self._free_at) - self._start)

    def report_at(self, t: float, window_s: float) -> None:
        busy = self.busy_until(t)
        self._history.append(busy)
        self.reported_load = min(max((busy - self._history[0]) / window_s, 0.0), 1.0)

    def outstanding(self, now: float) -> int:
        while self._finishes and self._finishes[0] <= now:
            self._finishes.popleft()
        return len(self._finishes)

    def assign(self, now: float, service_s: float) -> float:
        if self._free_at <= now:
            self._busy += self._free_at - self._start
            self._start = now
        finish = max(self._free_at, now) + service_s
        self._free_at = finish
        self._finishes.append(finish)
        self.routed += 1
        return finish


def _choose(servers: Sequence[_Server], now: float, weights: balancer.Weights) -> _Server:
    loads = [
        balancer.InstanceLoad(key=s.key, load=s.reported_load, outstanding=s.outstanding(now), capacity=s.spec.capacity)
        for s in servers
    ]
    return servers[balancer.rank(loads, weights)[0].key]  # type: ignore[index]


def simulate(
    specs: Sequence[ServerSpec], rate_rps: float, requests: int, seed: int, sizes: SizeSampler, params: SimParams
) -> SimResult:
    """Route ``requests`` Poisson arrivals at ``rate_rps`` over ``specs`` with the weighted balancer."""
    if rate_rps <= 0 or not specs:
        raise ValueError("simulate needs a positive rate and at least one server")
    servers = [_Server(i, spec, params) for i, spec in enumerate(specs)]
    arrivals_rng = random.Random(seed * 7919 + 1)
    draw_size = sizes(random.Random(seed * 7919 + 2))
    phase_rng = random.Random(seed * 7919 + 3)
    queued_rng = random.Random(seed * 7919 + 4)
    draw_queued = [empirical_sizes(s.queued_quantiles)(queued_rng) if s.queued_quantiles else None for s in specs]
    period = params.stats_period_s
    phases = [phase_rng.uniform(0.0, period) for _ in servers]
    ticks = [(phases[i], i, 0) for i in range(len(servers))]
    heapq.heapify(ticks)

    arrivals = [0.0] * requests
    finishes = [0.0] * requests
    chosen = [0] * requests
    now = 0.0
    for n in range(requests):
        now += arrivals_rng.expovariate(rate_rps)
        size = draw_size()
        while ticks[0][0] <= now:
            t, i, k = ticks[0]
            servers[i].report_at(t, params.load_window_s)
            heapq.heapreplace(ticks, (phases[i] + (k + 1) * period, i, k + 1))
        server = _choose(servers, now, params.weights)
        arrivals[n] = now
        chosen[n] = server.key
        spec, queued = server.spec, draw_queued[server.key]
        if server.busy_at(now):
            mean = spec.mean_service_s + spec.round_overhead_s / server.outstanding(now)
            service = mean * (queued() if queued is not None else size)
        else:
            service = (spec.lone_service_s or spec.mean_service_s) * size
        finishes[n] = server.assign(now, service) + size * spec.delay_s

    warm = min(int(requests * params.warmup_fraction), max(requests - 1, 0))
    latencies = sorted(finishes[n] - arrivals[n] for n in range(warm, requests))
    start, end = arrivals[warm], arrivals[-1]
    done = sum(1 for f in finishes if start <= f <= end)
    span = end - start
    per_server: list[list[float]] = [[] for _ in servers]
    for n in range(warm, requests):
        per_server[chosen[n]].append(finishes[n] - arrivals[n])
    return SimResult(
        latencies=latencies,
        throughput=done / span if span > 0 else math.nan,
        offered_rate=rate_rps,
        routed=[s.routed for s in servers],
        utilisation=[min(1.0, s.busy_until(end) / end) if end > 0 else 0.0 for s in servers],
        server_p99=[percentile(sorted(values), 99) for values in per_server],
    )
