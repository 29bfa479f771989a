"""The service-time spread at saturation, read from an instance's completions (its departure process).

Why the departures: a work-conserving server that always has a request waiting never idles, so the time between
two of its completions is exactly the service time of the second (the departure process of a saturated G/G/1 queue
*is* its service process). That is the service time as the instance delivers it under load, with everything a lone
request does not see: batches of unequal length, tokenising on the event loop, the front door's share of the CPU.

Batches: a batcher answers the requests of one batch together, so completions come in clumps. A clump of ``k``
completions after a gap ``G`` counts as ``k`` services of ``G / k`` (completions closer than 5 % of the mean gap
are one clump): the work ahead of a waiting request, which is what its wait is made of, is the same as with the real
staircase, whereas ``k - 1`` zero gaps and one long one drawn independently would invent a spread the server does
not have (a clump's zeros always come with its long gap).

Where: only while every instance is saturated. The last ``clients`` completions of a closed loop are dropped (after
the last request is sent fewer than ``clients`` are outstanding and the queues drain), and each instance's first
completion only starts its first gap. Each instance's samples are scaled by their own mean (a persistently faster
instance is a difference of speed, not spread) and the samples of all instances of the type are pooled.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence

from orchestrator.advisor.simulation import percentile

QUANTILES = 21  # 0, 5, ..., 100 %, as the low-load size quantiles
CLUMP_FRACTION = 0.05  # completions closer than this fraction of the mean gap were answered together
MIN_SERVICES = 20  # fewer service times than this say nothing of a spread


def quantiles_over_mean(samples: Sequence[float], count: int = QUANTILES) -> tuple[float, ...]:
    """``count`` evenly spaced quantiles (0..100 %, linearly interpolated) of ``samples`` divided by their mean."""
    ordered = sorted(samples)
    mean = statistics.fmean(ordered)
    return tuple(percentile(ordered, 100.0 * i / (count - 1)) / mean for i in range(count))


def instance_services(times: Iterable[float]) -> list[float]:
    """One saturated instance's service times (seconds) from its completion times, clumps split evenly."""
    ordered = sorted(times)
    if len(ordered) < 3 or ordered[-1] <= ordered[0]:
        return []
    close = CLUMP_FRACTION * (ordered[-1] - ordered[0]) / (len(ordered) - 1)
    ends: list[float] = []  # each clump's last completion
    sizes: list[int] = []  # and how many completions it holds
    for t in ordered:
        if ends and t - ends[-1] < close:
            ends[-1] = t
            sizes[-1] += 1
        else:
            ends.append(t)
            sizes.append(1)
    services: list[float] = []
    for before, end, count in zip(ends, ends[1:], sizes[1:], strict=False):
        services += [(end - before) / count] * count
    return services


def departure_spread(completions: Sequence[tuple[float, str]], clients: int) -> tuple[tuple[float, ...], int] | None:
    """The spread of service times at saturation from a closed loop's ``(completion time, instance)`` pairs.

    Returns the quantiles over the mean (``QUANTILES`` of them) and how many service times they rest on; None when
    fewer than ``MIN_SERVICES`` (too short a run to say).
    """
    steady = sorted(completions)[: max(0, len(completions) - clients)]
    by_instance: dict[str, list[float]] = {}
    for t, instance in steady:
        by_instance.setdefault(instance, []).append(t)
    pooled: list[float] = []
    for times in by_instance.values():
        services = instance_services(times)
        if services:
            mean = statistics.fmean(services)
            pooled += [s / mean for s in services]
    if len(pooled) < MIN_SERVICES:
        return None
    return quantiles_over_mean(pooled), len(pooled)
