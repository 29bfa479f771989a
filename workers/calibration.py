"""Measure what the model costs: at start-up, a forward pass beyond its tokens (the batcher's cut-point input); while
serving, seconds per token (the batcher's admission input)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

MAX_OVERHEAD_TOKENS = 1024.0


Embed = Callable[[list[Sequence[int]]], np.ndarray]


def _best_time_s(embed: Embed, batch: list[Sequence[int]], repeats: int, clock: Callable[[], float]) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = clock()
        embed(batch)
        best = min(best, clock() - started)
    return best


def measure_batch_overhead_tokens(
    embed: Embed,
    row: Sequence[int],
    repeats: int = 3,
    wide: int = 8,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Fixed cost of a forward pass expressed in tokens, from timing 1 and ``wide`` copies of ``row``.

    time(n rows) ~ overhead + n * len(row) * per_token, so per_token = (t_wide - t_one) / ((wide - 1) * len(row))
    and overhead_tokens = t_one / per_token - len(row). Clamped to [0, 1024]; timing noise can only move the
    batcher between near-equivalent cuts, never break it.
    """
    embed([list(row)])  # warm-up
    one = _best_time_s(embed, [list(row)], repeats, clock)
    many = _best_time_s(embed, [list(row)] * wide, repeats, clock)
    per_token = (many - one) / ((wide - 1) * len(row))
    if per_token <= 0:
        return MAX_OVERHEAD_TOKENS
    return float(min(max(one / per_token - len(row), 0.0), MAX_OVERHEAD_TOKENS))


class SpeedMeter:
    """Seconds per token of work while serving, learned from computed batches (the admission's clock rate).

    A batch's work is ``batch_overhead_tokens`` plus the tokens of its texts, unpadded: padding is then part of the
    measured rate, so estimates over queued (unpadded) tokens come out right on average. ``smoothing`` is the weight of
    the newest batch in an exponential moving average; ``seconds_per_token`` is None until a batch is measured.
    """

    def __init__(self, smoothing: float = 0.2) -> None:
        self._smoothing = smoothing
        self.seconds_per_token: float | None = None

    def record(self, work_tokens: float, seconds: float) -> None:
        """Fold in one computed batch (ignored when either number is not positive: nothing to learn)."""
        if work_tokens <= 0 or seconds <= 0:
            return
        rate = seconds / work_tokens
        previous = self.seconds_per_token
        self.seconds_per_token = rate if previous is None else previous + self._smoothing * (rate - previous)
