"""The instance count behind /health: Serve's, less the replicas the front door saw die before Serve did."""

from __future__ import annotations

from orchestrator.frontdoor.readiness import InstanceCount
from tests.fakes import ManualClock


def test_a_loss_counts_at_once_and_once_per_replica_until_serve_notices() -> None:
    count = InstanceCount(planned=2, clock=ManualClock())
    assert count() == (2, 2)
    for _ in range(3):  # three requests in flight on the same dead replica
        count.instance_lost("actor-a")
    assert count() == (1, 2)
    count.serve_reports(2)  # Serve has not noticed yet
    assert count() == (1, 2)
    count.serve_reports(1)  # now it has: its count is the truth
    assert count() == (1, 2)
    count.serve_reports(2)  # the replacement runs
    assert count() == (2, 2)


def test_a_loss_serve_never_confirms_is_forgotten() -> None:
    clock = ManualClock()
    count = InstanceCount(planned=3, clock=clock, hold_s=10.0)
    count.instance_lost("actor-a")
    count.instance_lost("actor-b")
    assert count() == (1, 3)
    clock.now += 10.5
    assert count() == (3, 3)


def test_never_below_zero() -> None:
    count = InstanceCount(planned=1, clock=ManualClock())
    count.instance_lost("a")
    count.instance_lost("b")
    assert count() == (0, 1)
