"""Front-door workers without a service: the shared counters, ``auto``'s count, the config rule, no Ray."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from orchestrator.config import parse_config
from orchestrator.contracts.errors import ConfigError
from orchestrator.contracts.plan import GpuBinding, Plan, PlannedInstance
from orchestrator.frontdoor.app import FrontDoor
from orchestrator.frontdoor.stats import CounterTable, FrontDoorStats
from orchestrator.frontdoor.worker_count import front_door_workers


def test_rows_written_by_another_process_add_up_in_every_reader() -> None:
    table = CounterTable.shared(3)
    mine = FrontDoorStats(table, 0)
    mine.requests += 5
    mine.retried += 1
    child = textwrap.dedent(
        f"""
        from orchestrator.frontdoor.stats import CounterTable, FrontDoorStats
        stats = FrontDoorStats(CounterTable(3, {table.fd}), 2)
        stats.requests += 7
        stats.timed_out += 2
        print(stats.totals()["requests"])
        """
    )
    done = subprocess.run([sys.executable, "-c", child], pass_fds=(table.fd,), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "12"  # the child sees our row too
    assert dict(mine.totals()) == {
        "requests": 12,
        "retried": 1,
        "instance_losses": 0,
        "failed_unavailable": 0,
        "timed_out": 2,
        "cancelled": 0,
        "failed_internal": 0,
    }
    rows = mine.workers()
    assert [(r["worker"], r["requests"]) for r in rows] == [(0, 5), (1, 0), (2, 7)]
    assert rows[1]["pid"] == 0 and rows[2]["pid"] not in (0, rows[0]["pid"])


def test_the_front_door_counts_into_the_shared_row_and_reports_every_worker() -> None:
    door = FrontDoor(1000, None)
    door.stats.requests += 3  # answered "starting" before the workers existed
    table = CounterTable.shared(2)
    door.use_stats(FrontDoorStats(table, 0))
    FrontDoorStats(table, 1).requests += 4
    assert door.counters()["requests"] == 7
    text = door.prometheus_text()
    assert 'orchestrator_front_door_worker_requests_total{worker="0"} 3.0' in text
    assert 'orchestrator_front_door_worker_requests_total{worker="1"} 4.0' in text
    assert "orchestrator_front_door_requests_total 7.0" in text
    alone = FrontDoor(1000, None).prometheus_text()
    assert "worker_requests" not in alone  # one process: the series would only repeat the total


def _plan(*sm_counts: int, cpu_pools: int = 0) -> Plan:
    instances = []
    for rank, sms in enumerate(sm_counts):
        binding = GpuBinding("mig", f"MIG-{rank}", 0, "GPU-0", "H100", "1g.10gb", 9_728, sms, rank, 0)
        instances.append(
            PlannedInstance(rank, f"g{rank}", "1g.10gb", "mig", (0,), 1, 8, 1, 4096, 2.0, 64, 4, gpu=binding)
        )
    for n in range(cpu_pools):
        instances.append(PlannedInstance(len(instances), f"c{n}", "cpu", "cpu", (n,), 1, 8, 1, 4096, 2.0, 64, 4))
    return Plan(tuple(instances), "mig" if sm_counts else "cpu")


def test_auto_is_one_on_cpu_pools_and_grows_with_the_slices_on_gpus() -> None:
    assert front_door_workers("auto", _plan(cpu_pools=2), "direct", cores=2) == 1
    # An H100 cut into 7 x 1g.10gb (16 SMs each): ~1,100 requests/s, which one process carries.
    assert front_door_workers("auto", _plan(*[16] * 7), "direct", cores=32) == 1
    # Four H100s cut so (28 slices): ~4,500 requests/s, three processes.
    four = _plan(*[16] * 28)
    assert front_door_workers("auto", four, "direct", cores=64) == 3
    assert front_door_workers("auto", _plan(*[132] * 16), "direct", cores=64) == 8  # 16 whole GPUs: capped
    assert front_door_workers("auto", four, "direct", cores=30) == 2  # 28 replicas leave two cores
    assert front_door_workers("auto", four, "serve", cores=64) == 1  # Serve handles live in the up process
    assert front_door_workers(3, _plan(cpu_pools=1), "direct", cores=2) == 3  # a number is taken as given


def test_workers_need_direct_lanes() -> None:
    with pytest.raises((ConfigError, ValueError), match="front_door_workers above 1 needs transport: direct"):
        parse_config({"mig_instances": [{"name": "a"}], "server": {"front_door_workers": 2, "transport": "serve"}})
    for wrong in (0, 65, "many", True):  # one line each, not one per member of the setting's union
        with pytest.raises((ConfigError, ValueError)) as failure:
            parse_config({"mig_instances": [{"name": "a"}], "server": {"front_door_workers": wrong}})
        message = str(failure.value)
        assert f"server.front_door_workers: 'auto' or a number of processes from 1 to 64, not {wrong!r}" in message
        assert "literal" not in message and "\n" not in message
    assert parse_config({"mig_instances": [{"name": "a"}]}).server.front_door_workers == "auto"


def test_a_worker_process_imports_neither_ray_nor_torch() -> None:
    code = "import sys, orchestrator.frontdoor.worker_main; print(sorted({'ray', 'torch'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
