"""Service times at a given load, read from a served open-loop run, and interpolated to the load being predicted.

Why at load: an instance's service time depends on the load around it, and the queue's tail rests on it. On the
served path a request that finds its instance idle is computed alone, while one that waited is computed while the
answers before it are encoded and sent and the next requests are received and tokenised on the same cores, and, at
higher loads, in rounds with other requests (the batcher merges what waits). Measured on 2 cores with 1 pool of 2
threads at 50 % load: a request that found its instance idle took 84 ms, one that waited 90 ms a request, with a
wider spread; at saturation (8 clients, large rounds) 76 ms. Neither the low-load latencies (too narrow: the p99
was under-predicted 1.3-1.5x) nor the saturated closed loop's departures (too wide: over-predicted 1.2-1.5x) are
the service at 50-80 % load; so the served check measures it there (docs/advisor.md).

Reading a run (``point_from_records``): every answer carries the instance's ``x-queue-time`` (arrival at the
instance to the start of its first batch) and ``x-inference-time`` (from then to its last vector). Requests that
started together on one instance (starts within ``ROUND_TOLERANCE_S``) were one round of the batcher: the round
took its longest member's inference time, shared evenly by its members (each is answered at about the round's end,
and the work ahead of a waiting request is what matters). A round whose first member waited less than
``IDLE_QUEUE_S`` found its instance idle: that member's share is a *lone* service; every other share is a *queued*
(back-to-back) service. What a request spends outside both (the front door, the lane, tokenising, the client) is
the latency minus the two, and does not hold the instance.

Interpolating (``at_utilisation``): means and quantiles linearly in the utilisation between the measured points
(quantile functions interpolated point by point: a distribution between the two), the first point's below it; above
the last, the queued mean goes linearly to the saturated service time at utilisation 1 (at saturation a server's
mean service time is its throughput's inverse), with the last point's shape.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.advisor.spread import quantiles_over_mean

ROUND_TOLERANCE_S = 0.003  # requests of one round start within this (a batch takes tens of ms on CPU)
IDLE_QUEUE_S = 0.003  # a request that waited less found its instance idle (the batcher waits up to 2 ms for company)
MIN_SERVICES = 20  # fewer lone or queued services than this say nothing of a spread


@dataclass(frozen=True)
class RequestRecord:
    """One answered request of an open-loop run: the instance, and seconds of latency, queue and inference."""

    instance: str
    sent_s: float
    latency_s: float
    queue_s: float
    inference_s: float


@dataclass(frozen=True)
class LoadPoint:
    """The service times of one instance type at one utilisation (offered rate over the served saturation rate).

    ``lone_*``: a request that found its instance idle; ``queued_*``: one that waited (its share of its round);
    means in milliseconds, quantiles (21) over the mean; ``outside_ms``: the mean time a request spends outside the
    instance. ``requests``: how many the run answered; ``lone`` / ``queued``: how many of each the spreads rest on.
    """

    utilisation: float
    lone_mean_ms: float
    lone_quantiles: tuple[float, ...]
    queued_mean_ms: float
    queued_quantiles: tuple[float, ...]
    outside_ms: float
    requests: int = 0
    lone: int = 0
    queued: int = 0


def _rounds(records: Sequence[RequestRecord]) -> list[list[RequestRecord]]:
    """Requests grouped by instance and start time (sent + latency - inference, the end of the answer's way back
    aside: the same for every member of a round within a few ms)."""
    by_instance: dict[str, list[tuple[float, RequestRecord]]] = {}
    for record in records:
        start = record.sent_s + record.latency_s - record.inference_s
        by_instance.setdefault(record.instance, []).append((start, record))
    rounds: list[list[RequestRecord]] = []
    for starts in by_instance.values():
        starts.sort(key=lambda pair: pair[0])
        first_start = None
        for start, record in starts:
            if first_start is not None and start - first_start < ROUND_TOLERANCE_S:
                rounds[-1].append(record)
            else:
                rounds.append([record])
                first_start = start
    return rounds


def describe_loads(points: Sequence[LoadPoint]) -> str:
    """``"37% and 66%"``: the loads the points were measured at, lowest first."""
    return " and ".join(f"{p.utilisation:.0%}" for p in sorted(points, key=lambda p: p.utilisation))


def point_from_records(records: Sequence[RequestRecord], utilisation: float) -> LoadPoint | None:
    """The load point of one open-loop run (``utilisation``: its offered rate over the saturated one, at most 1);
    None when fewer than ``MIN_SERVICES`` lone or queued services."""
    lone: list[float] = []
    queued: list[float] = []
    for members in _rounds(records):
        share = max(r.inference_s for r in members) / len(members)
        members.sort(key=lambda r: r.queue_s)
        for position, record in enumerate(members):
            (lone if position == 0 and record.queue_s < IDLE_QUEUE_S else queued).append(share)
    if len(lone) < MIN_SERVICES or len(queued) < MIN_SERVICES:
        return None
    outside = statistics.fmean(max(0.0, r.latency_s - r.queue_s - r.inference_s) for r in records)
    return LoadPoint(
        utilisation=round(min(1.0, utilisation), 4),
        lone_mean_ms=round(statistics.fmean(lone) * 1000, 3),
        lone_quantiles=tuple(round(q, 4) for q in quantiles_over_mean(lone)),
        queued_mean_ms=round(statistics.fmean(queued) * 1000, 3),
        queued_quantiles=tuple(round(q, 4) for q in quantiles_over_mean(queued)),
        outside_ms=round(outside * 1000, 3),
        requests=len(records),
        lone=len(lone),
        queued=len(queued),
    )


def scaled(point: LoadPoint, queued: float, lone: float) -> LoadPoint:
    """The point for an instance whose back-to-back service takes ``queued`` times as long and a lone request
    ``lone`` times (an estimated profile, scaled by compute slices); shapes and the time outside unchanged."""
    return dataclasses.replace(
        point, lone_mean_ms=point.lone_mean_ms * lone, queued_mean_ms=point.queued_mean_ms * queued
    )


def _mix(a: float, b: float, w: float) -> float:
    return a + (b - a) * w


def _between(low: LoadPoint, high: LoadPoint, utilisation: float) -> LoadPoint:
    w = (utilisation - low.utilisation) / (high.utilisation - low.utilisation)
    return LoadPoint(
        utilisation=utilisation,
        lone_mean_ms=_mix(low.lone_mean_ms, high.lone_mean_ms, w),
        lone_quantiles=tuple(_mix(a, b, w) for a, b in zip(low.lone_quantiles, high.lone_quantiles, strict=True)),
        queued_mean_ms=_mix(low.queued_mean_ms, high.queued_mean_ms, w),
        queued_quantiles=tuple(_mix(a, b, w) for a, b in zip(low.queued_quantiles, high.queued_quantiles, strict=True)),
        outside_ms=_mix(low.outside_ms, high.outside_ms, w),
    )


def at_utilisation(points: Sequence[LoadPoint], utilisation: float, saturated_service_ms: float) -> LoadPoint:
    """The service times at ``utilisation`` from the measured points (see the module docstring); ``points`` must
    not be empty."""
    ordered = sorted(points, key=lambda p: p.utilisation)
    if utilisation <= ordered[0].utilisation:
        return ordered[0]
    for low, high in zip(ordered, ordered[1:], strict=False):
        if utilisation <= high.utilisation:
            return _between(low, high, utilisation)
    last = ordered[-1]
    if last.utilisation >= 1.0:
        return last
    w = min(1.0, (utilisation - last.utilisation) / (1.0 - last.utilisation))
    return LoadPoint(
        utilisation=utilisation,
        lone_mean_ms=last.lone_mean_ms,
        lone_quantiles=last.lone_quantiles,
        queued_mean_ms=_mix(last.queued_mean_ms, saturated_service_ms, w),
        queued_quantiles=last.queued_quantiles,
        outside_ms=last.outside_ms,
    )
