"""The advisor's simulation core is the balancer study's, and predictions behave like queues."""

from __future__ import annotations

import math
import sys

import pytest

from orchestrator.advisor.predict import InstanceModel, predict
from orchestrator.advisor.simulation import ServerSpec, SimParams, empirical_sizes, lognormal_sizes, simulate
from orchestrator.balancer import Weights
from orchestrator.planning.mig_planner import capacity_for_sms
from tests.conftest import REPO

FLAT = tuple(0.5 + i * 0.05 for i in range(21))  # sizes uniform on [0.5, 1.5]


def test_same_numbers_as_the_balancer_study() -> None:
    """Same servers, sizes, seed and weights as scripts/simulation: exactly the same latencies and routing."""
    sys.path.insert(0, str(REPO))
    from scripts.simulation.model import ModelParams
    from scripts.simulation.model import simulate as study_simulate
    from scripts.simulation.policies import PolicySpec, make_policy

    params = ModelParams()
    specs = [ServerSpec(s.profile, params.mean_service_s(s), capacity_for_sms(s.sms)) for s in params.layout]
    for load, weights in ((0.8, (0.2, 0.8)), (0.5, (0.7, 0.3))):
        study = study_simulate(make_policy(PolicySpec("weighted", *weights), 2), load, 3000, 2, params)
        ours = simulate(
            specs, load * params.total_rate(), 3000, 2, lognormal_sizes(0.5), SimParams(weights=Weights(*weights))
        )
        assert ours.latencies == study.latencies
        assert ours.routed == study.routed


def test_empirical_sizes_have_mean_one() -> None:
    import random

    draw = empirical_sizes([0.2, 0.4, 1.0, 3.0, 9.0])(random.Random(1))
    mean = sum(draw() for _ in range(50_000)) / 50_000
    assert abs(mean - 1.0) < 0.02


def pool(rps: float, alone_ms: float) -> InstanceModel:
    return InstanceModel("cpu-1t", rps, alone_ms, alone_ms * 1.5, 8, FLAT)


def test_low_load_latency_is_the_measured_one_and_p99_grows_with_load() -> None:
    instances = [pool(10.0, 150.0)] * 2
    light = predict(instances, 0.5, 1e9)
    assert light.p50_ms == pytest.approx(150.0, rel=0.1)  # alone: what was measured
    half, busy = predict(instances, 10.0, 1e9), predict(instances, 16.0, 1e9)
    assert light.p99_ms < half.p99_ms < busy.p99_ms
    assert busy.utilisation == 0.8 and "busy" in busy.limit


def test_beyond_capacity_is_saturated_not_a_number() -> None:
    prediction = predict([pool(10.0, 100.0)], 9.9, 500.0)
    assert math.isinf(prediction.p99_ms) and not prediction.meets
    assert prediction.limit.startswith("throughput: 10.0 req/s at most")
