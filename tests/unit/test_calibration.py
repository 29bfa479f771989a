from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from tests.fakes import ManualClock
from workers.calibration import MAX_OVERHEAD_TOKENS, measure_batch_overhead_tokens


def model_costing(clock: ManualClock, fixed_s: float, per_token_s: float):
    def embed(batch: list[Sequence[int]]) -> np.ndarray:
        clock.now += fixed_s + per_token_s * sum(len(row) for row in batch)
        return np.zeros((len(batch), 4), dtype=np.float32)

    return embed


def test_overhead_is_the_fixed_cost_in_tokens() -> None:
    clock = ManualClock()
    # 8 ms per pass, 0.3 ms per token: a pass costs as much as ~26.7 tokens.
    embed = model_costing(clock, fixed_s=0.008, per_token_s=0.0003)
    assert measure_batch_overhead_tokens(embed, [1] * 16, clock=clock) == pytest.approx(0.008 / 0.0003, rel=1e-6)


def test_free_passes_and_nonsense_timings_are_clamped() -> None:
    clock = ManualClock()
    assert measure_batch_overhead_tokens(model_costing(clock, 0.0, 0.001), [1] * 16, clock=clock) == 0.0
    assert measure_batch_overhead_tokens(model_costing(clock, 0.01, 0.0), [1] * 16, clock=clock) == MAX_OVERHEAD_TOKENS


def test_speed_is_learned_from_batches_and_smoothed() -> None:
    from workers.calibration import SpeedMeter

    meter = SpeedMeter(smoothing=0.5)
    assert meter.seconds_per_token is None
    meter.record(work_tokens=100, seconds=1.0)
    assert meter.seconds_per_token == pytest.approx(0.01)
    meter.record(work_tokens=100, seconds=3.0)
    assert meter.seconds_per_token == pytest.approx(0.02)  # halfway to the newest rate
    meter.record(work_tokens=0, seconds=1.0)
    meter.record(work_tokens=100, seconds=0.0)
    assert meter.seconds_per_token == pytest.approx(0.02)  # nothing to learn from empty or instant batches
