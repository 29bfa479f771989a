"""Routing policies for the simulation. ``weighted`` is ours and calls the real ``orchestrator.balancer`` code.

Each policy is built per run from a picklable ``PolicySpec`` (the study runs in worker processes) and a seeded
``random.Random`` of its own, so a run is deterministic for its seed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator import balancer  # the module, not its functions: a test can swap ``balancer.rank`` for a spy
from scripts.simulation.model import Policy, Server

POLICY_NAMES = ("weighted", "round_robin", "random", "power_of_two", "least_outstanding")


@dataclass(frozen=True)
class PolicySpec:
    """Which policy, for ``weighted`` its weights and variant, and how many front doors route with it.

    Attributes:
        name: one of ``POLICY_NAMES``.
        load_weight, queue_weight: the weighted policy's ``balancer.Weights``.
        placing: requests counted on each candidate for the one being placed (``balancer.rank``'s ``placing``):
            1 is the balancer's default, 0 the ranking before the many-front-doors study.
        near: a what-if, not in ``orchestrator/balancer.py``: when > 0, the choice is random among the candidates
            whose score is within ``near`` of the best, with odds proportional to capacity (``front_doors.py``).
        front_doors: independent routers, each counting only its own outstanding requests (``front_doors.py``).
        view: how they learn the replicas' load: ``reports`` (periodic and shared: the Serve router) or ``lanes``
            (on each of their own answers, fading: the direct lanes). One front door with ``reports`` is the
            study's model (``model.simulate``).
    """

    name: str
    load_weight: float = 0.7
    queue_weight: float = 0.3
    placing: float = 1.0
    near: float = 0.0
    front_doors: int = 1
    view: str = "reports"

    @property
    def label(self) -> str:
        """A short name for tables: ``weighted 0.7/0.3``, ``round_robin``, ``weighted 0.2/0.8 x4 lanes``..."""
        name = self.name
        if self.name == "weighted":
            name = f"weighted {self.load_weight:g}/{self.queue_weight:g}" + self.variant
        if self.front_doors == 1 and self.view == "reports":
            return name
        return f"{name} x{self.front_doors} {self.view}"

    @property
    def variant(self) -> str:
        """`` placing 0``, `` near 0.05``...: what departs from the balancer's defaults, or empty."""
        placing = f" placing {self.placing:g}" if self.placing != 1 else ""
        return placing + (f" near {self.near:g}" if self.near else "")


class Weighted:
    """Ours: the real ``orchestrator.balancer.rank`` over what the Serve router would see; its first choice wins.

    Inputs as in ``orchestrator/serving/router.py``: ``load`` is the replica's last report (stale), ``outstanding`` the
    router's fresh count (reservations are always 0 here: routing and sending are one instant), ``capacity`` the
    replica's metadata, ``capacity_for_sms`` of its slice.
    """

    def __init__(self, weights: balancer.Weights, placing: float = 1.0) -> None:
        self._weights = weights
        self._placing = placing

    def choose(self, servers: Sequence[Server], now: float) -> int:
        loads = [
            balancer.InstanceLoad(
                key=s.index, load=s.reported_load, outstanding=s.outstanding(now), capacity=s.capacity
            )
            for s in servers
        ]
        return balancer.rank(loads, self._weights, self._placing)[0].key  # type: ignore[return-value]


class RoundRobin:
    """Each server in turn, blind to both load and size."""

    def __init__(self) -> None:
        self._next = 0

    def choose(self, servers: Sequence[Server], now: float) -> int:
        index = self._next % len(servers)
        self._next += 1
        return index


class Uniform:
    """A uniformly random server."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, servers: Sequence[Server], now: float) -> int:
        return self._rng.randrange(len(servers))


class PowerOfTwo:
    """Ray Serve's default, simplified: two distinct random candidates, the one with fewer outstanding wins.

    Fresh counts, no notion of capacity (a 1g slice with 2 waiting loses to a 3g slice with 1); a tie goes to the
    first candidate drawn, which is random.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, servers: Sequence[Server], now: float) -> int:
        count = len(servers)
        if count == 1:
            return 0
        first = self._rng.randrange(count)
        second = self._rng.randrange(count - 1)
        second += second >= first  # distinct from the first, uniformly
        return second if servers[second].outstanding(now) < servers[first].outstanding(now) else first


class LeastOutstanding:
    """Fewest outstanding requests (fresh count), no notion of capacity; ties are broken at random."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, servers: Sequence[Server], now: float) -> int:
        counts = [s.outstanding(now) for s in servers]
        least = min(counts)
        best = [i for i, c in enumerate(counts) if c == least]
        return best[0] if len(best) == 1 else self._rng.choice(best)


def make_policy(spec: PolicySpec, seed: int) -> Policy:
    """A fresh policy for one run; its randomness is seeded from ``seed`` (and not shared with the arrivals)."""
    return policy_with_rng(spec, random.Random(seed * 7919 + 4))


def policy_with_rng(spec: PolicySpec, rng: random.Random) -> Policy:
    """A fresh policy drawing its random choices (if any) from ``rng``."""
    if spec.name == "weighted":
        if spec.near:
            raise ValueError("near is a what-if of front_doors.simulate_front_doors, not of model.simulate")
        return Weighted(balancer.Weights(load_weight=spec.load_weight, queue_weight=spec.queue_weight), spec.placing)
    if spec.name == "round_robin":
        return RoundRobin()
    if spec.name == "random":
        return Uniform(rng)
    if spec.name == "power_of_two":
        return PowerOfTwo(rng)
    if spec.name == "least_outstanding":
        return LeastOutstanding(rng)
    raise ValueError(f"unknown policy {spec.name!r}: one of {', '.join(POLICY_NAMES)}")
