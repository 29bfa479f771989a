"""The queueing model: unequal slices, each one FIFO server, Poisson arrivals, and the simulation loop.

Model (the contract every number in ``docs/balancer-study.md`` rests on):

* **Instances.** One server per MIG slice, each serving one request at a time from its own unbounded FIFO queue
  (requests are never refused, never re-routed, never lost). A slice's service rate is proportional to its SMs:
  the mean service time on a slice of ``s`` SMs is ``service_ms_1g * 14 / s`` (``service_ms_1g`` is the mean on a
  14-SM 1g slice), so an A100-40GB cut 3g + 2g + 1g + 1g has rates in the ratio 3 : 2 : 1 : 1.
* **Service times.** Each request draws a size with mean 1 (log-normal with coefficient of variation ``cv`` by
  default, or exponential), and takes ``size * mean service time of the slice it lands on``. The size is drawn at
  arrival, independently of the routing, so every policy sees the same requests (common random numbers, which
  makes the policy comparison much less noisy than the absolute numbers).
* **Arrivals.** Poisson at ``load * total capacity``, where total capacity is the sum of the slices' service rates
  (requests/s): ``load`` is the offered utilisation of the whole GPU, and no policy can sustain ``load >= 1``.
* **What the router sees** (the weighted policy): ``outstanding`` is fresh (requests routed and not finished, as the
  router counts them); ``load`` is the busy fraction over the last ``load_window_s`` (2 s, the batcher's window),
  as each replica reports it every ``stats_period_s`` (0.5 s, Serve's routing-stats period), each replica at its
  own random phase: between two reports the router uses the old value, so it is stale by up to one period.
  Reservations are zero here because routing and sending are one instant in the simulation.

Completions are not heap events: with FIFO service a request's finish time is known when it is routed (the Lindley
recursion), so each server keeps its pending finish times in order and retires those in the past before each
decision, which is what processing completion events in time order would give. Report ticks are heap events.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from orchestrator.planning.mig_planner import capacity_for_sms

SMS_PER_1G_SLICE = 14


@dataclass(frozen=True)
class SliceSpec:
    """One MIG slice: its profile name, its streaming multiprocessors, and how far its real speed departs from them.

    ``speed`` multiplies the SM-proportional service rate (1.0: exactly proportional). The router never sees it:
    capacity still comes from the SMs, so ``speed != 1`` models a slice whose metadata misjudges it.
    """

    profile: str
    sms: int
    speed: float = 1.0


# The example: an A100-40GB (98 SMs usable by MIG) cut into 3g.20gb + 2g.10gb + 1g.5gb + 1g.5gb.
A100_40GB_3G_2G_1G_1G: tuple[SliceSpec, ...] = (
    SliceSpec("3g.20gb", 42),
    SliceSpec("2g.10gb", 28),
    SliceSpec("1g.5gb", 14),
    SliceSpec("1g.5gb", 14),
)

# An H100-80GB (132 SMs) cut the same way: 3g.40gb (60 SMs) + 2g.20gb (32) + 1g.10gb (16) + 1g.10gb (16).
H100_80GB_3G_2G_1G_1G: tuple[SliceSpec, ...] = (
    SliceSpec("3g.40gb", 60),
    SliceSpec("2g.20gb", 32),
    SliceSpec("1g.10gb", 16),
    SliceSpec("1g.10gb", 16),
)
LAYOUTS = {"a100": A100_40GB_3G_2G_1G_1G, "h100": H100_80GB_3G_2G_1G_1G}


@dataclass(frozen=True)
class ModelParams:
    """The model's knobs; the defaults are the ones the study reports.

    Attributes:
        service_ms_1g: mean service time of one request on a 14-SM (1g) slice, in milliseconds.
        distribution: ``"lognormal"`` (sizes with coefficient of variation ``cv``) or ``"exponential"`` (cv 1).
        cv: the log-normal's coefficient of variation (standard deviation / mean of a request's size).
        stats_period_s: how often each replica reports its load (Serve's ``request_routing_stats_period_s``).
        load_window_s: the window of the reported busy fraction (the batcher's ``load_window_s``).
        warmup_fraction: the first requests left out of the statistics (the system starts empty).
        layout: the slices.
    """

    service_ms_1g: float = 20.0
    distribution: str = "lognormal"
    cv: float = 0.5
    stats_period_s: float = 0.5
    load_window_s: float = 2.0
    warmup_fraction: float = 0.1
    layout: tuple[SliceSpec, ...] = field(default=A100_40GB_3G_2G_1G_1G)

    def mean_service_s(self, spec: SliceSpec) -> float:
        """Mean service time on ``spec`` in seconds: inversely proportional to its SMs (times its speed)."""
        return self.service_ms_1g / 1000.0 * SMS_PER_1G_SLICE / spec.sms / spec.speed

    def total_rate(self) -> float:
        """Requests/s all slices together complete when all are always busy (the 100% load)."""
        return sum(1.0 / self.mean_service_s(spec) for spec in self.layout)


class Server:
    """One slice: a FIFO single server, plus the busy fraction it would report to the router.

    Contract: calls come in non-decreasing time order (``report_at``, ``outstanding`` and ``assign`` with the
    current time, report ticks never earlier than the last assignment).
    """

    __slots__ = (
        "index",
        "spec",
        "capacity",
        "mean_service_s",
        "reported_load",
        "routed",
        "_finishes",
        "_free_at",
        "_period_start",
        "_busy_before",
        "_history",
        "_window_s",
    )

    def __init__(self, index: int, spec: SliceSpec, params: ModelParams) -> None:
        self.index = index
        self.spec = spec
        self.capacity = float(capacity_for_sms(spec.sms))  # what the router reads from the replica's metadata
        self.mean_service_s = params.mean_service_s(spec)
        self.reported_load = 0.0  # the router's view until the first report: Serve starts with no stats
        self.routed = 0
        self._finishes: deque[float] = deque()  # finish times of routed, unfinished requests (ascending: FIFO)
        self._free_at = 0.0  # when the work routed so far is done
        self._period_start = 0.0  # start of the latest busy period
        self._busy_before = 0.0  # busy seconds of all earlier busy periods
        self._window_s = params.load_window_s
        # Cumulative busy seconds at the last reports, one window back: reports are periodic, so the oldest entry
        # is the value at (now - window). Times before 0 had no busy time, hence the zeros.
        periods = max(1, round(params.load_window_s / params.stats_period_s))
        self._history: deque[float] = deque([0.0] * (periods + 1), maxlen=periods + 1)

    def busy_until(self, t: float) -> float:
        """Busy seconds in [0, t]; exact for any t not before the latest assignment."""
        return self._busy_before + max(0.0, min(t, self._free_at) - self._period_start)

    def report_at(self, t: float) -> None:
        """The replica's report at t: busy fraction of (t - window, t], which the router keeps until the next.

        Contract: called every ``stats_period_s`` exactly (the window is measured in reports).
        """
        busy = self.busy_until(t)
        self._history.append(busy)
        self.reported_load = min(max((busy - self._history[0]) / self._window_s, 0.0), 1.0)

    def outstanding(self, now: float) -> int:
        """Requests routed here and not finished at ``now`` (the router's fresh count)."""
        finishes = self._finishes
        while finishes and finishes[0] <= now:
            finishes.popleft()
        return len(finishes)

    def assign(self, now: float, service_s: float) -> float:
        """Queue a request arriving at ``now`` needing ``service_s`` of work; return its finish time."""
        if self._free_at <= now:  # idle: close the previous busy period, open a new one
            self._busy_before += self._free_at - self._period_start
            self._period_start = now
            start = now
        else:
            start = self._free_at
        finish = start + service_s
        self._free_at = finish
        self._finishes.append(finish)
        self.routed += 1
        return finish


class Policy(Protocol):
    """A routing policy: picks the index of a server for a request arriving at ``now``."""

    def choose(self, servers: Sequence[Server], now: float) -> int: ...


@dataclass(frozen=True)
class RunResult:
    """One simulated run. Latencies are seconds, from arrival to finish, warm-up requests excluded.

    Attributes:
        latencies: sorted latencies of the measured requests.
        arrivals: arrival time of every request (warm-up included), in order.
        service: service time of every request on the slice it was routed to.
        offered_rate: the Poisson arrival rate (requests/s).
        throughput: requests finished per second between the first measured arrival and the last arrival.
        routed: requests routed to each server.
        destinations: the server each request was routed to, in arrival order (warm-up included).
        doors: the front door each request arrived at (``front_doors.py``; empty from ``simulate``: one door).
    """

    latencies: list[float]
    arrivals: list[float]
    service: list[float]
    offered_rate: float
    throughput: float
    routed: list[int]
    destinations: list[int] = field(default_factory=list)
    doors: list[int] = field(default_factory=list)


def _size_sampler(params: ModelParams, rng: random.Random):  # type: ignore[no-untyped-def]
    """A function drawing request sizes with mean 1."""
    if params.distribution == "exponential":
        return lambda: rng.expovariate(1.0)
    if params.distribution != "lognormal":
        raise ValueError(f"unknown distribution {params.distribution!r}: use lognormal or exponential")
    sigma = math.sqrt(math.log1p(params.cv**2))
    mu = -sigma * sigma / 2.0  # so that the mean is exp(mu + sigma^2 / 2) = 1
    return lambda: rng.lognormvariate(mu, sigma)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of already sorted values, linearly interpolated."""
    if not sorted_values:
        return math.nan
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def simulate(policy: Policy, load: float, requests: int, seed: int, params: ModelParams) -> RunResult:
    """Route ``requests`` Poisson arrivals at ``load`` x total capacity with ``policy``; deterministic per seed.

    The arrivals, the request sizes and the report phases come from streams seeded by ``seed`` alone, so every
    policy run with the same seed sees the same requests; the policy's own randomness is its business.
    """
    if load <= 0.0:
        raise ValueError("load must be > 0")
    servers = [Server(i, spec, params) for i, spec in enumerate(params.layout)]
    arrivals_rng = random.Random(seed * 7919 + 1)
    sizes_rng = random.Random(seed * 7919 + 2)
    phase_rng = random.Random(seed * 7919 + 3)
    draw_size = _size_sampler(params, sizes_rng)
    rate = load * params.total_rate()
    period = params.stats_period_s

    # Report ticks: (time, server, tick number); each replica reports at its own phase, as Serve's pulls are not
    # synchronised across replicas. The tick number keeps the times exact (phase + k * period, no drift).
    phases = [phase_rng.uniform(0.0, period) for _ in servers]
    ticks: list[tuple[float, int, int]] = [(phases[i], i, 0) for i in range(len(servers))]
    heapq.heapify(ticks)

    arrivals = [0.0] * requests
    finishes = [0.0] * requests
    service = [0.0] * requests
    destinations = [0] * requests
    now = 0.0
    for n in range(requests):
        now += arrivals_rng.expovariate(rate)
        size = draw_size()
        while ticks[0][0] <= now:  # every report due before this arrival, in time order
            t, i, k = ticks[0]
            servers[i].report_at(t)
            heapq.heapreplace(ticks, (phases[i] + (k + 1) * period, i, k + 1))
        destinations[n] = chosen = policy.choose(servers, now)
        server = servers[chosen]
        service_s = size * server.mean_service_s
        arrivals[n] = now
        service[n] = service_s
        finishes[n] = server.assign(now, service_s)

    return run_result(arrivals, finishes, service, rate, servers, destinations, params.warmup_fraction)


def run_result(
    arrivals: list[float],
    finishes: list[float],
    service: list[float],
    rate: float,
    servers: Sequence[Server],
    destinations: list[int],
    warmup_fraction: float,
    doors: list[int] | None = None,
) -> RunResult:
    """The measured part of a run: latencies after the warm-up, throughput between the first measured and the last
    arrival (shared by ``simulate`` and ``front_doors.simulate_front_doors``)."""
    requests = len(arrivals)
    warm = min(int(requests * warmup_fraction), max(requests - 1, 0))
    latencies = sorted(finishes[n] - arrivals[n] for n in range(warm, requests))
    start, end = arrivals[warm], arrivals[-1]
    done = sum(1 for f in finishes if start <= f <= end)
    throughput = done / (end - start) if end > start else math.nan
    return RunResult(
        latencies=latencies,
        arrivals=arrivals,
        service=service,
        offered_rate=rate,
        throughput=throughput,
        routed=[s.routed for s in servers],
        destinations=destinations,
        doors=doors if doors is not None else [],
    )
