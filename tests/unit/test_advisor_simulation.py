"""The advisor's simulation core is the balancer study's, and predictions behave like queues."""

from __future__ import annotations

import math
import random
import sys

import pytest

from orchestrator.advisor.predict import InstanceModel, predict
from orchestrator.advisor.simulation import ServerSpec, SimParams, empirical_sizes, lognormal_sizes, simulate
from orchestrator.advisor.spread import departure_spread
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


# Back-to-back service times much more spread than a lone request's (E[S^2] = 2.7 x mean^2 against FLAT's 1.08).
WIDE = (*(0.1 + 0.05 * i for i in range(20)), 8.0)


def second_moment(quantiles: tuple[float, ...]) -> float:
    """E[X^2] of the sampler's distribution (piecewise-linear inverse CDF, mean 1), exactly."""
    steps = len(quantiles) - 1
    mean = sum((quantiles[i] + quantiles[i + 1]) / 2 for i in range(steps)) / steps
    q = [x / mean for x in quantiles]
    return sum((q[i] ** 2 + q[i] * q[i + 1] + q[i + 1] ** 2) / 3 for i in range(steps)) / steps


@pytest.mark.parametrize("queued", [None, WIDE])
def test_one_server_waits_as_the_exceptional_first_service_queue(queued: tuple[float, ...] | None) -> None:
    """M/G/1 whose back-to-back services have their own spread: mean wait lambda ((1 - rho) E[S0^2] + rho E[S^2]) /
    (2 (1 - rho)) (Pollaczek-Khinchine when alike, which is what a file without a saturation spread gets)."""
    mean_s, rate, rho = 0.1, 5.0, 0.5
    result = simulate([ServerSpec("a", mean_s, 8, 0.0, queued)], rate, 100_000, 1, empirical_sizes(FLAT), SimParams())
    lone = second_moment(FLAT) * mean_s**2
    back_to_back = second_moment(queued or FLAT) * mean_s**2
    expected = rate * ((1 - rho) * lone + rho * back_to_back) / (2 * (1 - rho))
    wait = sum(result.latencies) / len(result.latencies) - mean_s
    assert wait == pytest.approx(expected, rel=0.08)
    assert result.throughput == pytest.approx(rate, rel=0.02)  # the spread has mean 1: capacity is unchanged


@pytest.mark.parametrize(("lone_s", "queued_s"), [(0.08, 0.1), (0.12, 0.1), (0.09, 0.11)])
def test_lone_and_back_to_back_services_with_their_own_means(lone_s: float, queued_s: float) -> None:
    """Measured at load, a lone request and one served back to back have their own means (S0, S): Welch's mean
    wait ``lambda E[S^2] / (2 (1 - rho)) + lambda (E[S0^2] - E[S^2]) / (2 (1 - rho + rho0))``."""
    rate = 5.0
    spec = ServerSpec("a", queued_s, 8, 0.0, WIDE, lone_service_s=lone_s)
    result = simulate([spec], rate, 200_000, 2, empirical_sizes(FLAT), SimParams())
    lone, back_to_back = second_moment(FLAT) * lone_s**2, second_moment(WIDE) * queued_s**2
    rho, rho0 = rate * queued_s, rate * lone_s
    expected = rate * back_to_back / (2 * (1 - rho)) + rate * (lone - back_to_back) / (2 * (1 - rho + rho0))
    # The mean service: lone with the idle probability (1 - rho) / (1 - rho + rho0), back to back otherwise.
    idle = (1 - rho) / (1 - rho + rho0)
    service = idle * lone_s + (1 - idle) * queued_s
    wait = sum(result.latencies) / len(result.latencies) - service
    assert wait == pytest.approx(expected, rel=0.08)


def test_a_rounds_overhead_is_shared_by_the_requests_waiting() -> None:
    """0.1 s a request at saturation plus 0.05 s a round: at 8 req/s a queue that paid the overhead on every request
    (0.15 s, 120 % busy) would grow without end; shared by the requests waiting it stays bounded and carries the
    rate, and it costs more than no overhead at all."""
    flat, shared = ServerSpec("a", 0.1, 8), ServerSpec("a", 0.1, 8, round_overhead_s=0.05)
    every = ServerSpec("a", 0.15, 8, lone_service_s=0.1)
    results = [simulate([s], 8.0, 30_000, 4, empirical_sizes(FLAT), SimParams()) for s in (flat, shared, every)]
    assert results[1].throughput == pytest.approx(8.0, rel=0.03)
    assert results[0].percentile(99) < results[1].percentile(99) < 5.0 < results[2].percentile(99)
    # Alone, nothing is shared: a lone request takes its size times the mean service, overhead or not.
    alone = [simulate([s], 0.1, 2000, 4, empirical_sizes(FLAT), SimParams()) for s in (flat, shared)]
    assert alone[0].percentile(50) == pytest.approx(alone[1].percentile(50), rel=0.01)


def test_the_spread_at_saturation_widens_the_tail_not_a_lone_request() -> None:
    plain, spread = ServerSpec("a", 0.1, 8, 0.02), ServerSpec("a", 0.1, 8, 0.02, WIDE)
    alone = [simulate([s], 0.2, 3000, 3, empirical_sizes(FLAT), SimParams()) for s in (plain, spread)]
    assert alone[1].percentile(50) == pytest.approx(alone[0].percentile(50), rel=0.01)  # nothing queues
    busy = [simulate([s], 8.0, 20_000, 3, empirical_sizes(FLAT), SimParams()) for s in (plain, spread)]
    assert busy[1].percentile(99) > 1.5 * busy[0].percentile(99)


def saturated_completions(services: list[list[float]]) -> list[tuple[float, str]]:
    """Completion times of always-busy instances, one list of service times (or batch times) each."""
    out = []
    for number, durations in enumerate(services):
        t = 0.0
        for duration in durations:
            t += duration
            out.append((t, f"pool-{number}"))
    return out


def test_the_departures_of_a_saturated_server_are_its_service_times() -> None:
    """Exponential service times, two instances interleaved: the spread is the exponential's (quantile p is
    -ln(1 - p) over a mean of 1), whatever the instances' speeds."""
    rng = random.Random(7)
    services = [[rng.expovariate(10.0) for _ in range(1500)], [rng.expovariate(4.0) for _ in range(1500)]]
    quantiles, count = departure_spread(saturated_completions(services), clients=8)
    assert count > 2900
    assert quantiles[10] == pytest.approx(math.log(2), abs=0.06)  # median
    assert quantiles[19] == pytest.approx(-math.log(0.05), rel=0.1)  # 95 %
    assert quantiles[0] < 0.05 and quantiles[-1] > 5


def test_a_batch_answered_together_is_split_evenly_not_read_as_zeros() -> None:
    """Rounds of 4 requests taking 0.3-0.5 s, answered within 2 ms: services of a quarter round each, 0.75-1.25 of
    their mean; and the drained end of the closed loop (a 10 s gap in its last completions) is not read."""
    rng = random.Random(3)
    rounds = [[rng.uniform(0.3, 0.5) for _ in range(300)] for _ in range(2)]
    completions = [(t + rng.uniform(0.0, 0.002), name) for t, name in saturated_completions(rounds) for _ in range(4)]
    completions += [(completions[-1][0] + 10.0, "pool-0")] * 8
    quantiles, count = departure_spread(completions, clients=8)
    assert quantiles[0] > 0.72 and quantiles[-1] < 1.28 and count > 2000
    assert departure_spread(completions[:12], clients=8) is None  # too short to say
