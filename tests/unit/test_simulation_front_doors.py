"""The many-front-doors simulation (scripts/simulation/front_doors.py) and the ranking change it led to.

Mechanics checked exactly on small runs (each front door routes on its own counts and its own view of the load),
conclusions with stated bounds on runs of a few thousand requests. Fast: the whole file runs in a few seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import balancer
from scripts.simulation.front_doors import (
    MeteredServer,
    arrival_dispersion,
    near_choice,
    simulate_front_doors,
)
from scripts.simulation.model import ModelParams, RunResult, SliceSpec, percentile, simulate
from scripts.simulation.policies import PolicySpec, make_policy

PARAMS = ModelParams()
DEFAULT = PolicySpec("weighted", *balancer.Weights())  # the balancer's weights, 0.2/0.8


def doors(count: int, view: str = "lanes", **changes: float) -> PolicySpec:
    return PolicySpec("weighted", *balancer.Weights(), front_doors=count, view=view, **changes)  # type: ignore[arg-type]


def p99(result: RunResult) -> float:
    return percentile(result.latencies, 99)


def schedule(result: RunResult) -> tuple[list[float], list[float]]:
    """Each request's start and finish, recomputed from the result (FIFO per server: the Lindley recursion)."""
    free = [0.0] * len(result.routed)
    starts, finishes = [], []
    for arrival, server, service in zip(result.arrivals, result.destinations, result.service, strict=True):
        start = max(arrival, free[server])
        free[server] = start + service
        starts.append(start)
        finishes.append(start + service)
    return starts, finishes


@pytest.mark.parametrize(
    "spec",
    [DEFAULT, PolicySpec("weighted", 0.7, 0.3, placing=0.0), PolicySpec("power_of_two"), PolicySpec("round_robin")],
    ids=lambda spec: spec.label,
)
def test_one_front_door_with_shared_reports_is_the_study_run(spec: PolicySpec) -> None:
    single = simulate(make_policy(spec, 2), 0.8, 3000, 2, PARAMS)
    one_door = simulate_front_doors(spec, 0.8, 3000, 2, PARAMS)
    assert one_door.latencies == single.latencies
    assert one_door.destinations == single.destinations
    assert one_door.routed == single.routed
    assert set(one_door.doors) == {0}


def test_front_doors_see_the_same_requests_whatever_their_number() -> None:
    one, four = (
        simulate_front_doors(doors(1), 0.8, 2000, 3, PARAMS),
        simulate_front_doors(doors(4), 0.8, 2000, 3, PARAMS),
    )
    assert one.arrivals == four.arrivals  # common random numbers: only the routing differs
    assert set(four.doors) == {0, 1, 2, 3}
    assert all(250 < four.doors.count(d) < 750 for d in range(4))  # arrivals split uniformly at random


def test_each_front_door_routes_on_its_own_counts_and_its_own_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the balancer is given, decision by decision, recomputed from the run: the deciding door's own
    outstanding requests, and (lanes) the busy fraction on the door's last answer from each server, faded."""
    seen: list[list[balancer.InstanceLoad]] = []
    real_choose = balancer.choose

    def spy(instances: list[balancer.InstanceLoad], weights: balancer.Weights, placing: float = 1.0):  # type: ignore[no-untyped-def]
        seen.append(list(instances))
        return real_choose(instances, weights, placing)

    monkeypatch.setattr(balancer, "choose", spy)
    result = simulate_front_doors(doors(3), 0.8, 400, 1, PARAMS)
    starts, finishes = schedule(result)
    window = PARAMS.load_window_s

    def busy_fraction(server: int, t: float) -> float:
        busy = sum(
            max(0.0, min(finishes[m], t) - max(starts[m], t - window))
            for m in range(len(starts))
            if result.destinations[m] == server
        )
        return min(busy / window, 1.0)

    assert len(seen) == 400
    for n, instances in enumerate(seen):
        now, door = result.arrivals[n], result.doors[n]
        mine = [m for m in range(n) if result.doors[m] == door]
        for server, item in enumerate(instances):
            on_it = [m for m in mine if result.destinations[m] == server]
            own = sum(1 for m in on_it if finishes[m] > now)
            answered = [finishes[m] for m in on_it if finishes[m] <= now]
            heard = max(answered, default=None)
            expected = (
                0.0 if heard is None else balancer.faded_load(busy_fraction(server, heard), now - heard, window, own)
            )
            assert item.outstanding == own
            assert item.load == pytest.approx(expected, abs=1e-9)
        assert result.destinations[n] == real_choose(instances, balancer.Weights()).key  # type: ignore[union-attr]
    # Somewhere a door did not know of another door's request: the counts really are per front door.
    totals = [
        sum(1 for m in range(n) if result.destinations[m] == s and finishes[m] > result.arrivals[n])
        for s in range(4)
        for n in range(400)
    ]
    assert sum(totals) > sum(item.outstanding for instances in seen for item in instances)


def test_the_busy_fraction_on_an_answer_is_the_window_ending_then() -> None:
    server = MeteredServer(0, SliceSpec("1g.5gb", 14), PARAMS)  # 2 s window; answers come after each assignment
    server.assign(0.0, 1.0)  # busy 0-1
    assert server.load_at(1.0) == pytest.approx(1.0 / 2.0)
    server.assign(1.5, 0.5)  # busy 1.5-2
    assert server.load_at(2.0) == pytest.approx(1.5 / 2.0)
    server.assign(3.0, 2.0)  # busy 3-5
    assert server.load_at(3.5) == pytest.approx(1.0 / 2.0)  # (1.5, 3.5]: 1.5-2 and 3-3.5
    assert server.load_at(5.0) == pytest.approx(1.0)
    assert server.load_at(8.0) == 0.0


def test_near_choice_is_random_among_near_scores_with_odds_by_capacity() -> None:
    import random

    rng = random.Random(1)
    loads = [
        balancer.InstanceLoad("3g", load=0.5, outstanding=0, capacity=21),
        balancer.InstanceLoad("1g", load=0.5, outstanding=0, capacity=7),
        balancer.InstanceLoad("busy", load=1.0, outstanding=7, capacity=7),
    ]
    weights = balancer.Weights()
    picks = [near_choice(loads, weights, 1.0, 0.1, rng) for _ in range(2000)]
    assert "busy" not in picks
    assert 0.70 < picks.count("3g") / len(picks) < 0.80  # 21 / (21 + 7) = 0.75
    assert {near_choice(loads, weights, 1.0, 0.0, rng) for _ in range(50)} == {"3g"}  # near 0: the balancer's pick


def test_shared_stale_reports_make_front_doors_herd_and_answers_do_not() -> None:
    """Arrival dispersion at the slices: < 1 with one front door (requests spread evenly in time), about or below 1
    with 8 front doors on direct lanes (independent views), well above 1 with 8 front doors reading the same
    periodic reports (they pile onto the slice that last reported least)."""
    one = arrival_dispersion(simulate_front_doors(doors(1), 0.5, 6000, 1, PARAMS))
    lanes = arrival_dispersion(simulate_front_doors(doors(8), 0.5, 6000, 1, PARAMS))
    reports = arrival_dispersion(simulate_front_doors(doors(8, "reports"), 0.5, 6000, 1, PARAMS))
    randomised = arrival_dispersion(simulate_front_doors(doors(8, "reports", near=0.05), 0.5, 6000, 1, PARAMS))
    assert one < 0.7
    assert lanes < 1.1
    assert reports > 1.5
    assert randomised < 1.1


def test_p99_with_four_front_doors_on_lanes_stays_within_1_4x_of_one_at_80_percent() -> None:
    one = p99(simulate_front_doors(doors(1), 0.8, 20000, 1, PARAMS))
    four = p99(simulate_front_doors(doors(4), 0.8, 20000, 1, PARAMS))
    four_before = p99(simulate_front_doors(doors(4, placing=0.0), 0.8, 20000, 1, PARAMS))
    assert four <= 1.4 * one
    assert four < four_before  # counting the request being placed is what keeps it there


def test_rank_counts_the_request_being_placed() -> None:
    weights = balancer.Weights()
    idle_1g = balancer.InstanceLoad("1g", load=0.0, outstanding=0, capacity=7)
    busy_3g = balancer.InstanceLoad("3g", load=0.0, outstanding=1, capacity=21)
    assert balancer.choose([idle_1g, busy_3g], weights).key == "3g"  # 2/21 < 1/7: 2 fast services beat 1 slow one
    assert balancer.choose([idle_1g, busy_3g], weights, placing=0).key == "1g"  # the ranking before: 0 < 1/21
    assert balancer.score(busy_3g, weights, placing=1) == pytest.approx(0.8 * 2 / 21)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="view"):
        simulate_front_doors(doors(2, "gossip"), 0.5, 100, 1, PARAMS)
    with pytest.raises(ValueError, match="front_doors"):
        simulate_front_doors(doors(0), 0.5, 100, 1, PARAMS)
    with pytest.raises(ValueError, match="near"):
        make_policy(PolicySpec("weighted", near=0.1), 1)


def test_the_command_line_runs_the_front_door_study(tmp_path: Path) -> None:
    from scripts import simulate_balancer

    out = tmp_path / "doors.md"
    args = ["--front-doors", "1", "2", "--requests", "300", "--seeds", "1", "--jobs", "1", "--loads", "0.8"]
    simulate_balancer.main([*args, "--views", "lanes", "--markdown", str(out)])
    text = out.read_text()
    assert "| lanes | weighted 0.2/0.8 placing 0 | 80% |" in text
    assert "| lanes | weighted 0.2/0.8 near 0.05 | 80% |" in text
    assert "Herding" in text
