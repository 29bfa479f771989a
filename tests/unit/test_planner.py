from __future__ import annotations

import pytest

from orchestrator.config import parse_config
from orchestrator.contracts.errors import PlanError
from orchestrator.hardware.topology import CpuTopology, Topology
from orchestrator.planning.planner import REQUESTS_PER_THREAD, plan


def config(instances: int, **sections: object):
    raw = {"mig_instances": [{"name": f"i{n}", "batch_size": 4 + n} for n in range(instances)], **sections}
    return parse_config(raw)


def cores(count: int) -> Topology:
    return Topology(cpu=CpuTopology(cores=tuple(range(count))))


def test_auto_pools_one_per_instance_up_to_the_cores() -> None:
    placement = plan(config(3), cores(2))
    assert [(i.name, i.cpu_cores, i.threads) for i in placement.instances] == [("i0", (0,), 1), ("i1", (1,), 1)]
    assert len(placement.notes) == 1 and "'i2' not placed" in placement.notes[0]
    assert "cpu_pools.count: 3" in placement.notes[0]


def test_auto_threads_split_the_cores() -> None:
    placement = plan(config(2), cores(8))
    assert [i.cpu_cores for i in placement.instances] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert all(i.threads == 4 and i.capacity == 4 * REQUESTS_PER_THREAD for i in placement.instances)
    assert placement.notes == ()


def test_instance_settings_travel_with_the_plan() -> None:
    placement = plan(config(2, batching={"max_batch_tokens": 999, "max_wait_ms": 5}), cores(2))
    first, second = placement.instances
    assert (first.batch_size, second.batch_size) == (4, 5)
    assert first.max_batch_tokens == 999 and first.max_wait_ms == 5
    assert [i.rank for i in placement.instances] == [0, 1]


def test_explicit_pools_may_oversubscribe_with_a_note() -> None:
    placement = plan(config(3, cpu_pools={"count": 3, "threads_per_pool": 1}), cores(2))
    assert [i.cpu_cores for i in placement.instances] == [(0,), (1,), (0,)]
    assert any("oversubscribe" in note for note in placement.notes)


def test_unused_pools_are_reported() -> None:
    placement = plan(config(1, cpu_pools={"count": 2}), cores(4))
    assert len(placement.instances) == 1 and placement.instances[0].threads == 2
    assert any("1 CPU pool(s) unused" in note for note in placement.notes)


def test_threads_per_pool_limits_the_pool_count() -> None:
    placement = plan(config(4, cpu_pools={"threads_per_pool": 2}), cores(4))
    assert [i.cpu_cores for i in placement.instances] == [(0, 1), (2, 3)]


def test_unknown_rank_is_a_plan_error() -> None:
    placement = plan(config(1), cores(2))
    assert placement.instance_for_rank(0).name == "i0"
    with pytest.raises(PlanError, match="rank 1 has no planned instance"):
        placement.instance_for_rank(1)
