"""Many front doors: N independent balancers routing over the same slices, each knowing only its own requests.

The model of ``model.py`` (one FIFO server per slice, Poisson arrivals, common random numbers) with the router
split in N. Each arrival goes to one front door picked uniformly at random (the kernel's ``SO_REUSEPORT`` hash, or a
Kubernetes Service, spreads connections that way), and each front door routes with state of its own:

* **outstanding**: the requests *it* sent to each server and that have not finished (fresh, but only its share);
* **load**, as one of two views:

  - ``lanes`` (``orchestrator/frontdoor/lanes.py``, the direct lanes): a replica's busy fraction over the last
    ``load_window_s`` rides on each of its answers, so a front door learns it only when one of *its* requests to
    that replica finishes; there are no periodic reports (a PONG carries no load). While none of its requests run
    there, the last answer's load fades linearly over the window (``balancer.faded_load``) as if the replica
    were idle, because this front door sent nothing;
  - ``reports`` (``orchestrator/serving/router.py``, the Serve path): every replica reports every
    ``stats_period_s``, at its own phase, and every front door reads the same report (stale by up to one period).

With one front door and the ``reports`` view this is exactly ``model.simulate`` (same requests, same decisions);
with the ``lanes`` view it is what one front door on direct lanes sees.

Answers are heap events (finish time, front door, server): a front door's count and view change only when its own
answers arrive, and the ``lanes`` view needs the replica's busy fraction at that instant. Report ticks are heap
events as in ``model.simulate``.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable, Sequence

from orchestrator import balancer  # the module, not its functions: a test can swap them for spies
from scripts.simulation.model import ModelParams, RunResult, Server, SliceSpec, _size_sampler, run_result
from scripts.simulation.policies import PolicySpec, policy_with_rng

VIEWS = ("lanes", "reports")


class MeteredServer(Server):
    """A ``Server`` that can also say its busy fraction over the window ending at any answer's finish time.

    Contract: ``load_at`` is called with non-decreasing times, none before the latest assignment (answers are
    processed in time order before each arrival is routed).
    """

    __slots__ = ("_closed",)

    def __init__(self, index: int, spec: SliceSpec, params: ModelParams) -> None:
        super().__init__(index, spec, params)
        # Closed busy periods still inside some future window: (start, end, busy seconds before start).
        self._closed: deque[tuple[float, float, float]] = deque()

    def assign(self, now: float, service_s: float) -> float:
        if self._period_start < self._free_at <= now:  # the busy period that just ended is closed by super()
            self._closed.append((self._period_start, self._free_at, self._busy_before))
        return super().assign(now, service_s)

    def _busy_before_time(self, x: float) -> float:
        """Busy seconds in [0, x] for an ``x`` in the past; forgets the periods that ended before ``x``."""
        closed = self._closed
        while closed and closed[0][1] <= x:
            closed.popleft()
        if closed:
            start, _, before = closed[0]
            return before + max(0.0, x - start)  # x < end of this period
        return self.busy_until(x)

    def load_at(self, t: float) -> float:
        """The busy fraction of (t - window, t], as the replica's batcher measures it (``workers/batcher.py``)."""
        busy = self.busy_until(t) - self._busy_before_time(t - self._window_s)
        return min(max(busy / self._window_s, 0.0), 1.0)


class DoorServer:
    """One server as one front door sees it; quacks like ``Server`` for the policies of ``policies.py``.

    ``reported_load`` is the view's load (the shared report, or the faded load of this door's last answer) and
    ``outstanding`` this door's own count.
    """

    __slots__ = ("server", "index", "capacity", "own", "heard_load", "heard_at", "_view", "_window_s")

    def __init__(self, server: MeteredServer, view: str, window_s: float) -> None:
        self.server = server
        self._window_s = window_s  # what the replica says at greeting (lanes.py: LaneConnection.load_window_s)
        self.index = server.index
        self.capacity = server.capacity
        self.own = 0
        self.heard_load = 0.0  # lanes: the load on the last answer this door received from the server...
        self.heard_at: float | None = None  # ...and when (None: no answer yet, i.e. load 0 as lanes.py starts)
        self._view = view

    def outstanding(self, now: float) -> int:
        return self.own

    def load(self, now: float) -> float:
        """The load this front door passes to the balancer at ``now``."""
        if self._view == "reports":
            return self.server.reported_load
        if self.heard_at is None:
            return 0.0
        return balancer.faded_load(self.heard_load, now - self.heard_at, self._window_s, self.own)

    @property
    def reported_load(self) -> float:
        return self.server.reported_load


Choose = Callable[[Sequence[DoorServer], float], int]


def make_door_policy(spec: PolicySpec, rng: random.Random) -> Choose:
    """One front door's routing: ``weighted`` calls the real balancer as ``lanes.py`` (``balancer.choose``) or the
    Serve router (``balancer.rank``) does; the baselines of ``policies.py`` run unchanged over this door's counts."""
    if spec.name != "weighted":
        return policy_with_rng(spec, rng).choose  # type: ignore[return-value]
    weights = balancer.Weights(load_weight=spec.load_weight, queue_weight=spec.queue_weight)
    placing, near, lanes = spec.placing, spec.near, spec.view == "lanes"

    def choose(servers: Sequence[DoorServer], now: float) -> int:
        loads = [
            balancer.InstanceLoad(key=s.index, load=s.load(now), outstanding=s.own, capacity=s.capacity)
            for s in servers
        ]
        if near:
            return near_choice(loads, weights, placing, near, rng)
        if lanes:
            return balancer.choose(loads, weights, placing).key  # type: ignore[union-attr,return-value]
        return balancer.rank(loads, weights, placing)[0].key  # type: ignore[return-value]

    return choose


def near_choice(
    loads: Sequence[balancer.InstanceLoad], weights: balancer.Weights, placing: float, near: float, rng: random.Random
) -> int:
    """The what-if against herding: a random instance among those scoring within ``near`` of the best (the
    balancer's ``score``), with odds proportional to capacity, so that front doors seeing the same stale loads do
    not all pick the same one."""
    scores = [balancer.score(item, weights, placing) for item in loads]
    best = min(scores)
    candidates = [item for item, value in zip(loads, scores, strict=True) if value <= best + near]
    if len(candidates) == 1:
        return candidates[0].key  # type: ignore[return-value]
    return rng.choices(candidates, weights=[item.capacity for item in candidates])[0].key  # type: ignore[return-value]


def arrival_dispersion(result: RunResult, window_s: float = 0.1, warmup_fraction: float = 0.1) -> float:
    """Herding, measured: the index of dispersion (variance / mean) of the requests each server receives per
    ``window_s``, averaged over the servers weighted by their share, warm-up left out.

    Poisson arrivals split at random give 1; a balancer that spreads requests evenly in time gives less (one
    front door with fresh counts: 0.4-0.7); front doors piling onto the same server together give more.
    """
    warm = int(len(result.arrivals) * warmup_fraction)
    arrivals, destinations = result.arrivals[warm:], result.destinations[warm:]
    if not destinations or len(destinations) != len(arrivals):
        return math.nan
    start = arrivals[0]
    windows = int((arrivals[-1] - start) / window_s)
    if windows < 2:
        return math.nan
    counts = [[0] * windows for _ in result.routed]
    for t, server in zip(arrivals, destinations, strict=True):
        w = int((t - start) / window_s)
        if w < windows:
            counts[server][w] += 1
    total, weighted = 0, 0.0
    for per_window in counts:
        routed = sum(per_window)
        if routed:
            mean = routed / windows
            variance = sum((c - mean) ** 2 for c in per_window) / windows
            weighted += routed * variance / mean
            total += routed
    return weighted / total if total else math.nan


def door_rng(seed: int, door: int) -> random.Random:
    """Door 0's stream is the one ``policies.make_policy`` gives a single router, so N = 1 is the study's run."""
    return random.Random(seed * 7919 + 4) if door == 0 else random.Random(f"{seed}:{door}:policy")


def simulate_front_doors(spec: PolicySpec, load: float, requests: int, seed: int, params: ModelParams) -> RunResult:
    """Route ``requests`` Poisson arrivals at ``load`` over ``spec.front_doors`` front doors; deterministic per
    seed. The requests (arrival times, sizes) and report phases are those of ``model.simulate`` for the seed."""
    if load <= 0.0:
        raise ValueError("load must be > 0")
    if spec.view not in VIEWS:
        raise ValueError(f"unknown view {spec.view!r}: one of {', '.join(VIEWS)}")
    if spec.front_doors < 1:
        raise ValueError("front_doors must be >= 1")
    servers = [MeteredServer(i, s, params) for i, s in enumerate(params.layout)]
    arrivals_rng = random.Random(seed * 7919 + 1)
    sizes_rng = random.Random(seed * 7919 + 2)
    phase_rng = random.Random(seed * 7919 + 3)
    doors_rng = random.Random(seed * 7919 + 5)
    draw_size = _size_sampler(params, sizes_rng)
    rate = load * params.total_rate()
    period = params.stats_period_s
    count = spec.front_doors
    views = [[DoorServer(s, spec.view, params.load_window_s) for s in servers] for _ in range(count)]
    policies = [make_door_policy(spec, door_rng(seed, d)) for d in range(count)]

    phases = [phase_rng.uniform(0.0, period) for _ in servers]
    ticks: list[tuple[float, int, int]] = [(phases[i], i, 0) for i in range(len(servers))]
    heapq.heapify(ticks)
    if spec.view != "reports":
        ticks = [(math.inf, 0, 0)]
    answers: list[tuple[float, int, int]] = []  # (finish, door, server)
    lanes = spec.view == "lanes"

    arrivals = [0.0] * requests
    finishes = [0.0] * requests
    service = [0.0] * requests
    destinations = [0] * requests
    doors = [0] * requests
    now = 0.0
    for n in range(requests):
        now += arrivals_rng.expovariate(rate)
        size = draw_size()
        doors[n] = door = doors_rng.randrange(count) if count > 1 else 0
        while ticks[0][0] <= now:
            t, i, k = ticks[0]
            servers[i].report_at(t)
            heapq.heapreplace(ticks, (phases[i] + (k + 1) * period, i, k + 1))
        while answers and answers[0][0] <= now:  # every answer due before this arrival, in time order
            t, d, i = heapq.heappop(answers)
            seen = views[d][i]
            seen.own -= 1
            if lanes:
                seen.heard_load, seen.heard_at = servers[i].load_at(t), t
        view = views[door]
        destinations[n] = chosen = policies[door](view, now)
        server = servers[chosen]
        service_s = size * server.mean_service_s
        arrivals[n] = now
        service[n] = service_s
        finishes[n] = finish = server.assign(now, service_s)
        view[chosen].own += 1
        heapq.heappush(answers, (finish, door, chosen))

    return run_result(arrivals, finishes, service, rate, servers, destinations, params.warmup_fraction, doors)
