"""How sure a measured percentile is: confidence intervals for a run's p99 (``validate`` prints them).

Two intervals, and ``percentile_interval`` reports the span of both:

* **Order statistics** (distribution-free, exact for independent samples): the q-th percentile lies between the
  r-th and s-th smallest of n samples with probability ``P(r <= B < s)``, B ~ Binomial(n, q). With too few samples
  beyond the percentile a side is unbounded: of 240 samples 2.4 lie above the true p99 on average, none of them in
  9 % of runs, so not even the largest bounds the p99 from above at 95 % (1,000 samples: between their 983rd and
  997th smallest).
* **Circular block bootstrap** (Politis and Romano 1992): resamples runs of consecutive latencies (wrapping around
  the end, so that the last requests are drawn as often as the others), so that it keeps what the order statistics
  assume away: in a queue, consecutive requests' latencies are correlated (a burst delays all of a busy period),
  and a run holds fewer independent tail samples than requests.

The span is never narrower than the exact answer for independent samples, and is widened where correlation makes the
tail less certain.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.advisor.simulation import percentile


@dataclass(frozen=True)
class Interval:
    """A percentile's estimate and its interval (``low`` may be -inf and ``high`` inf where the data cannot bound
    it), with the two intervals it spans."""

    q: float
    estimate: float
    low: float
    high: float
    order_statistics: tuple[float, float]
    block_bootstrap: tuple[float, float]
    samples: int

    def holds(self, value: float) -> bool:
        return self.low <= value <= self.high

    def verdict(self, predicted: float) -> str:
        """Where ``predicted`` lies against the interval, in words."""
        if self.holds(predicted):
            return "inside the measured interval"
        return "below the measured interval (under-predicted)" if predicted < self.low else "above it (over-predicted)"


def _binomial_cdf(n: int, p: float) -> list[float]:
    """``[P(B <= k) for k in 0..n]`` for B ~ Binomial(n, p), 0 < p < 1 (log space: n may be large)."""
    log_p, log_q = math.log(p), math.log1p(-p)
    total, out = 0.0, []
    for k in range(n + 1):
        total += math.exp(
            math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_q
        )
        out.append(min(total, 1.0))
    return out


def order_statistic_ranks(n: int, q: float, confidence: float = 0.95) -> tuple[int | None, int | None]:
    """1-based ranks ``(r, s)`` with ``P(X(r) <= q-th percentile <= X(s)) >= confidence`` for n independent samples,
    each side holding at most half the miss; None for a side the n samples cannot bound."""
    if n < 1 or not 0 < q < 100 or not 0 < confidence < 1:
        raise ValueError("order_statistic_ranks needs n >= 1, 0 < q < 100 and 0 < confidence < 1")
    tail = (1.0 - confidence) / 2.0
    cdf = _binomial_cdf(n, q / 100.0)
    # X(r) > percentile exactly when fewer than r samples are below it: P(B <= r - 1) must stay within the tail.
    low = max((r for r in range(1, n + 1) if cdf[r - 1] <= tail), default=None)
    # X(s) < percentile exactly when at least s samples are below it: P(B >= s) = 1 - P(B <= s - 1).
    high = min((s for s in range(1, n + 1) if 1.0 - cdf[s - 1] <= tail), default=None)
    return low, high


def order_statistic_interval(sorted_values: Sequence[float], q: float, confidence: float = 0.95) -> tuple[float, float]:
    """The distribution-free interval for the q-th percentile of independent samples (sorted)."""
    low, high = order_statistic_ranks(len(sorted_values), q, confidence)
    return (
        sorted_values[low - 1] if low is not None else -math.inf,
        sorted_values[high - 1] if high is not None else math.inf,
    )


def block_bootstrap_interval(
    values: Sequence[float],
    q: float,
    confidence: float = 0.95,
    block: int | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of the circular block bootstrap of the q-th percentile of ``values`` (in the order they
    were taken); ``block`` defaults to the square root of their number (a queue's busy periods are shorter)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    length = max(1, min(n, block or math.ceil(math.sqrt(n))))
    wrapped = list(values) + list(values[: length - 1])
    rng = random.Random(seed)
    estimates: list[float] = []
    for _ in range(resamples):
        sample: list[float] = []
        while len(sample) < n:
            start = rng.randrange(n)
            sample.extend(wrapped[start : start + length])
        estimates.append(percentile(sorted(sample[:n]), q))
    estimates.sort()
    tail = 100.0 * (1.0 - confidence) / 2.0
    return percentile(estimates, tail), percentile(estimates, 100.0 - tail)


def percentile_interval(values_in_order: Sequence[float], q: float = 99.0, confidence: float = 0.95) -> Interval:
    """The q-th percentile of a run's latencies (given in the order the requests were sent) and its interval: the
    span of the order-statistic and the block-bootstrap intervals (module docstring)."""
    ordered = sorted(values_in_order)
    if not ordered:
        raise ValueError("percentile_interval needs at least one value")
    exact = order_statistic_interval(ordered, q, confidence)
    blocks = block_bootstrap_interval(values_in_order, q, confidence)
    return Interval(
        q=q,
        estimate=percentile(ordered, q),
        low=min(exact[0], blocks[0]),
        high=max(exact[1], blocks[1]),
        order_statistics=exact,
        block_bootstrap=blocks,
        samples=len(ordered),
    )
