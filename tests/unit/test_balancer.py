from __future__ import annotations

import pytest

from orchestrator.balancer import InstanceLoad, Weights, choose, rank, score

SEED = Weights(0.7, 0.3)


def test_score_is_the_seed_formula_with_queue_normalised_by_capacity() -> None:
    assert score(InstanceLoad("a", load=0.5, outstanding=4, capacity=8), SEED) == pytest.approx(0.7 * 0.5 + 0.3 * 0.5)
    assert score(InstanceLoad("a", load=0.0, outstanding=0, capacity=8), SEED) == 0.0


def test_load_is_clamped_to_a_fraction() -> None:
    assert score(InstanceLoad("a", load=3.0, outstanding=0, capacity=1), SEED) == pytest.approx(0.7)
    assert score(InstanceLoad("a", load=-1.0, outstanding=0, capacity=1), SEED) == 0.0


def test_lowest_score_wins() -> None:
    busy = InstanceLoad("busy", load=0.9, outstanding=1, capacity=8)
    idle = InstanceLoad("idle", load=0.1, outstanding=3, capacity=8)
    assert choose([busy, idle], SEED).key == "idle"


def test_bigger_instance_takes_more_queue_before_losing() -> None:
    small = InstanceLoad("1g", load=0.5, outstanding=3, capacity=8)
    big = InstanceLoad("3g", load=0.5, outstanding=6, capacity=24)
    assert choose([small, big], SEED).key == "3g"  # 6/24 < 3/8
    # Without normalisation a raw queue count would have sent it to the small one.
    assert choose([small, InstanceLoad("3g", 0.5, 6, 8)], SEED).key == "1g"


def test_weights_change_the_choice() -> None:
    loaded_short_queue = InstanceLoad("a", load=0.9, outstanding=0, capacity=8)
    idle_long_queue = InstanceLoad("b", load=0.0, outstanding=6, capacity=8)
    assert choose([loaded_short_queue, idle_long_queue], Weights(0.7, 0.3)).key == "b"
    assert choose([loaded_short_queue, idle_long_queue], Weights(0.1, 0.9)).key == "a"


def test_ties_prefer_free_capacity_then_input_order() -> None:
    a = InstanceLoad("a", load=0.0, outstanding=0, capacity=8)
    b = InstanceLoad("b", load=0.0, outstanding=0, capacity=16)
    assert [i.key for i in rank([a, b], SEED)] == ["b", "a"]
    c = InstanceLoad("c", load=0.0, outstanding=0, capacity=8)
    assert [i.key for i in rank([a, c], SEED)] == ["a", "c"]


def test_empty_input() -> None:
    assert choose([], SEED) is None
    assert rank([], SEED) == []


def test_a_reported_load_fades_over_its_window_only_while_nothing_of_ours_runs() -> None:
    from orchestrator.balancer import faded_load

    assert faded_load(0.8, age_s=0.0, window_s=2.0, outstanding=0) == 0.8
    assert faded_load(0.8, age_s=1.0, window_s=2.0, outstanding=0) == pytest.approx(0.4)
    assert faded_load(0.8, age_s=5.0, window_s=2.0, outstanding=0) == 0.0
    assert faded_load(0.8, age_s=5.0, window_s=2.0, outstanding=3) == 0.8  # ours run there: the report holds


def test_spread_fills_nodes_by_capacity_and_prefers_running_ones() -> None:
    from orchestrator.balancer import spread

    assert spread([0, 0], [1, 3], [True, True]) == 1  # idle: the bigger node first
    assert spread([0, 3], [1, 3], [True, True]) == 0  # 1/1 against 4/3
    assert spread([5, 0], [1, 3], [True, False]) == 0  # the other has no running instance
    assert spread([5, 0], [1, 3], [False, False]) == 1  # none running: all are candidates
