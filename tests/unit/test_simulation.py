"""The balancer study's simulator (scripts/simulation): its mechanics, not its conclusions. Fast: small runs only."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from orchestrator import balancer
from scripts.simulation.model import A100_40GB_3G_2G_1G_1G, ModelParams, RunResult, Server, SliceSpec, simulate
from scripts.simulation.policies import POLICY_NAMES, PolicySpec, make_policy
from scripts.simulation.study import Cell, Task, best_weights, run_tasks, summarise

PARAMS = ModelParams()


def run(name: str, load: float, requests: int, seed: int = 1, **weights: float) -> RunResult:
    spec = PolicySpec(name, **weights)
    return simulate(make_policy(spec, seed), load, requests, seed, PARAMS)


def p99(result: RunResult) -> float:
    return result.latencies[int(0.99 * (len(result.latencies) - 1))]


def test_a_run_is_deterministic_for_its_seed() -> None:
    for name in ("random", "weighted"):
        first, again = run(name, 0.8, 2000, seed=3), run(name, 0.8, 2000, seed=3)
        assert first.latencies == again.latencies
        assert first.routed == again.routed
    assert run("random", 0.8, 2000, seed=4).latencies != run("random", 0.8, 2000, seed=3).latencies


def test_policies_see_the_same_requests_for_a_seed() -> None:
    """Common random numbers: same arrivals and sizes, whatever the routing."""
    rr, lo = run("round_robin", 0.5, 1000), run("least_outstanding", 0.5, 1000)
    assert rr.arrivals == lo.arrivals


def test_capacity_is_the_sum_of_sm_proportional_rates() -> None:
    # 14-SM slice at 20 ms: 50 req/s; 3g + 2g + 1g + 1g = 7 such slices.
    assert PARAMS.total_rate() == pytest.approx(350.0)
    assert [PARAMS.mean_service_s(s) for s in A100_40GB_3G_2G_1G_1G] == pytest.approx([0.02 / 3, 0.01, 0.02, 0.02])


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_at_low_load_every_policy_gives_about_the_service_time(name: str) -> None:
    result = run(name, 0.02, 3000)
    warm = len(result.arrivals) - len(result.latencies)
    assert statistics.fmean(result.latencies) <= 1.05 * statistics.fmean(result.service[warm:])


def test_round_robin_saturates_the_small_slices_at_80_percent() -> None:
    """A quarter of 80% of 350 req/s is 70 req/s per slice, above a 1g slice's 50: its queue grows without end."""
    rr, lo = run("round_robin", 0.8, 20000), run("least_outstanding", 0.8, 20000)
    assert rr.routed[0] == rr.routed[2]  # blind to size: as many to the 3g slice as to a 1g
    assert rr.throughput < 0.95 * rr.offered_rate
    assert p99(rr) > 10 * p99(lo)


@pytest.mark.parametrize(("name", "load"), [("least_outstanding", 0.5), ("weighted", 0.8), ("power_of_two", 0.8)])
def test_throughput_is_the_arrival_rate_below_saturation(name: str, load: float) -> None:
    result = run(name, load, 15000)
    assert result.offered_rate == pytest.approx(load * 350.0)
    assert result.throughput == pytest.approx(result.offered_rate, rel=0.05)


def test_the_weighted_policy_calls_the_real_balancer(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[balancer.InstanceLoad]] = []
    firsts = [0, 0, 0, 0]
    real_rank = balancer.rank

    def spy(
        instances: list[balancer.InstanceLoad], weights: balancer.Weights, placing: float = 1.0
    ) -> list[balancer.InstanceLoad]:
        assert weights == balancer.Weights(0.7, 0.3)
        assert placing == 1.0  # the balancer's default: the request being placed counted
        seen.append(list(instances))
        ranked = real_rank(instances, weights, placing)
        firsts[ranked[0].key] += 1  # type: ignore[index]
        return ranked

    monkeypatch.setattr(balancer, "rank", spy)
    result = run("weighted", 0.8, 2000)
    assert len(seen) == 2000
    assert [i.capacity for i in seen[0]] == [21, 14, 7, 7]  # capacity_for_sms of 42, 28, 14, 14 SMs
    assert any(i.load > 0 for i in seen[-1])  # the replicas' reports reach the balancer
    assert result.routed == firsts  # every request went to the balancer's first choice


def test_the_weighted_policy_follows_whatever_the_balancer_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(balancer, "rank", lambda instances, weights, placing=1.0: list(instances)[::-1])
    assert run("weighted", 0.3, 500).routed == [0, 0, 0, 500]


def test_the_reported_load_is_a_windowed_busy_fraction_refreshed_only_at_reports() -> None:
    server = Server(0, SliceSpec("1g.5gb", 14), PARAMS)  # reports every 0.5 s over 2 s
    server.assign(0.0, 1.0)  # busy from 0 to 1 s
    assert server.reported_load == 0.0  # nothing reported yet: the router's view lags
    server.report_at(0.5)
    assert server.reported_load == pytest.approx(0.5 / 2.0)
    server.report_at(1.0)
    assert server.reported_load == pytest.approx(1.0 / 2.0)
    server.report_at(1.5)
    server.report_at(2.0)
    assert server.reported_load == pytest.approx(1.0 / 2.0)
    server.report_at(2.5)  # window (0.5, 2.5]: busy 0.5 s of it
    assert server.reported_load == pytest.approx(0.5 / 2.0)
    assert server.outstanding(0.9) == 1 and server.outstanding(1.0) == 0


def test_servers_are_fifo_and_count_outstanding_freshly() -> None:
    server = Server(0, SliceSpec("3g.20gb", 42), PARAMS)
    assert server.assign(0.0, 1.0) == 1.0
    assert server.assign(0.5, 1.0) == 2.0  # waits for the first
    assert server.outstanding(0.5) == 2
    assert server.assign(3.0, 1.0) == 4.0  # idle again: starts at once
    assert server.busy_until(3.5) == pytest.approx(2.5)


def test_best_weights_is_the_lowest_relative_p99_over_the_sweep_loads() -> None:
    def cell(spec: PolicySpec, load: float, p99_ms: float) -> Cell:
        return Cell(spec, load, 1.0, p99_ms, p99_ms, p99_ms, 1.0, 1.0, 1.0, (1.0,), 1)

    a, b = PolicySpec("weighted", 0.0, 1.0), PolicySpec("weighted", 0.5, 0.5)
    # a: best at 80% by 10%, worse at 95% by 50%: b is better over both.
    cells = {(a, 0.8): cell(a, 0.8, 100), (b, 0.8): cell(b, 0.8, 110), (a, 0.95): cell(a, 0.95, 300)}
    cells[(b, 0.95)] = cell(b, 0.95, 200)
    assert best_weights(cells, [0.8, 0.95]) == b
    assert best_weights(cells, [0.8]) == a


def test_study_summary_averages_over_seeds() -> None:
    tasks = [Task(PolicySpec("least_outstanding"), 0.5, seed, 500, PARAMS) for seed in (1, 2)]
    runs = run_tasks(tasks, jobs=1)
    cells = summarise(runs)
    only = cells[(PolicySpec("least_outstanding"), 0.5)]
    assert only.seeds == 2
    assert only.p99_ms == pytest.approx(statistics.fmean(r.p99_ms for r in runs))
    assert only.p99_min_ms <= only.p99_ms <= only.p99_max_ms


def test_the_command_line_runs_end_to_end(tmp_path: Path) -> None:
    from scripts import simulate_balancer

    out = tmp_path / "study.md"
    args = ["--requests", "300", "--seeds", "1", "--jobs", "1", "--loads", "0.5", "0.8", "--sweep-loads", "0.8"]
    simulate_balancer.main([*args, "--markdown", str(out), "--plot", str(tmp_path / "sweep.png")])
    text = out.read_text()
    assert "| 50% | weighted 0.7/0.3 (seed) |" in text
    assert "Best weights by p99 at 80%" in text
