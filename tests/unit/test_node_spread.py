"""Spreading requests over the nodes of a cluster (one Serve application per node), without Ray."""

from __future__ import annotations

import asyncio

from orchestrator.contracts.forwarding import ForwardedRequest, ForwardedResponse
from orchestrator.frontdoor.node_spread import NodeSpreadForwarder

REQUEST = ForwardedRequest("POST", "/embed", b"", (), b"{}")


class NodeForwarder:
    """One node: answers after ``release`` is set, counts what it received, reports its readiness."""

    def __init__(self, name: str, ready: int = 1) -> None:
        self.name = name
        self.ready = ready
        self.received = 0
        self.release = asyncio.Event()

    async def __call__(self, request: ForwardedRequest) -> ForwardedResponse:
        self.received += 1
        await self.release.wait()
        return ForwardedResponse(200, (), self.name.encode())

    def readiness(self) -> tuple[int, int]:
        return self.ready, 2


def test_outstanding_work_is_spread_in_proportion_to_capacity() -> None:
    async def scenario() -> tuple[int, int]:
        big, small = NodeForwarder("big"), NodeForwarder("small")
        spread = NodeSpreadForwarder([(big, 3), (small, 1)])
        calls = [asyncio.ensure_future(spread(REQUEST)) for _ in range(8)]
        await asyncio.sleep(0)
        counts = big.received, small.received
        big.release.set()
        small.release.set()
        await asyncio.gather(*calls)
        return counts

    assert asyncio.run(scenario()) == (6, 2)


def test_a_node_without_running_instances_is_skipped_and_readiness_adds_up() -> None:
    async def scenario() -> tuple[int, int, tuple[int, int]]:
        down, up = NodeForwarder("down", ready=0), NodeForwarder("up", ready=2)
        spread = NodeSpreadForwarder([(down, 4), (up, 1)])
        up.release.set()
        answers = await asyncio.gather(*(spread(REQUEST) for _ in range(3)))
        assert {answer.body for answer in answers} == {b"up"}
        return down.received, up.received, spread.readiness()

    assert asyncio.run(scenario()) == (0, 3, (2, 4))


def test_completed_requests_free_their_node() -> None:
    async def scenario() -> list[str]:
        first, second = NodeForwarder("first"), NodeForwarder("second")
        first.release.set()
        second.release.set()
        spread = NodeSpreadForwarder([(first, 1), (second, 1)])
        return [(await spread(REQUEST)).body.decode() for _ in range(3)]

    assert asyncio.run(scenario()) == ["first", "first", "first"]  # sequential: the first node is always free
