"""When `up` starts a front door on the other nodes, and how a failed one is explained (the 2-node cluster test
checks one serving: tests/integration/test_cluster_probe.py)."""

from __future__ import annotations

import pytest

from orchestrator.contracts.errors import DeployError
from orchestrator.serving import node_front_doors
from tests.integration.conftest import make_loaded


def test_no_front_door_elsewhere_without_lanes_or_when_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_ray() -> None:
        raise AssertionError("Ray must not be asked")

    monkeypatch.setattr(node_front_doors.ray, "get_runtime_context", no_ray)
    plan = object()
    assert node_front_doors.open_node_front_doors(make_loaded(8000), plan, None) == []  # no lane token: Serve handles
    off = make_loaded(8000, server={"port": 8000, "front_door_per_node": False})
    assert node_front_doors.open_node_front_doors(off, plan, "token") == []


def test_a_node_whose_port_is_taken_is_named_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.contracts.plan import Plan, PlannedInstance

    class Context:
        def get_node_id(self) -> str:
            return "head-id"

    class Handle:
        class where:  # noqa: N801 - Ray's method handle
            @staticmethod
            def remote() -> str:
                return "ref"

    class Actor:
        def options(self, **_: object) -> Actor:
            return self

        def remote(self, *_: object) -> Handle:
            return Handle()

    traceback = (
        "ray.exceptions.ActorDiedError: The actor died because of an error raised in its creation task\n"
        "  File ...\n"
        "orchestrator.contracts.errors.PortBusy: 0.0.0.0:8000 is taken on that node: set server.node_port to a "
        "port free on every node, or server.front_door_per_node: false\n"
    )
    killed = []
    monkeypatch.setattr(node_front_doors.ray, "get_runtime_context", Context)
    monkeypatch.setattr(node_front_doors.ray, "remote", lambda _cls: Actor())

    def failed_constructor(*_: object, **__: object) -> None:
        raise RuntimeError(traceback)

    monkeypatch.setattr(node_front_doors.ray, "get", failed_constructor)
    monkeypatch.setattr(node_front_doors.ray, "kill", lambda handle, no_restart: killed.append(handle))
    instance = PlannedInstance(
        0, "a", "cpu", "cpu", (0,), 1, 8, 1, 4096, 2.0, 64, 4, node_id="w-id", node_ip="10.0.0.2"
    )
    plan = Plan((instance,), "cpu")
    with pytest.raises(DeployError) as failure:
        node_front_doors.open_node_front_doors(make_loaded(8000, server={"port": 8000}), plan, "token")
    assert failure.value.message == (
        "the front door on node 10.0.0.2 did not start: PortBusy: 0.0.0.0:8000 is taken on that node: set "
        "server.node_port to a port free on every node, or server.front_door_per_node: false"
    )
    assert len(killed) == 1
