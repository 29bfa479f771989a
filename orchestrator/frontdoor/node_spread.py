"""Spreading requests over the nodes of a cluster when Serve routes inside each node (``server.transport: serve``).

One Serve application per node; the front door picks the node (``balancer.spread``: least outstanding requests per
unit of capacity among nodes with a running instance), and our router picks the replica inside it.
"""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.balancer import spread
from orchestrator.contracts.forwarding import ForwardedRequest, ForwardedResponse, NodeTransport


class NodeSpreadForwarder:
    """Spreads requests over several nodes' forwarders (one Serve application per node in a cluster).

    Each request goes to the node with the least outstanding requests per unit of capacity, among nodes with a
    running instance (all of them if none has one), counted here: this front door is the only sender, so the count
    is exact. Inside the chosen node our balancer picks the replica. A retried request is spread again.
    """

    def __init__(self, forwarders: Sequence[tuple[NodeTransport, int]]) -> None:
        """``forwarders``: (forwarder with ``readiness()``, the node's total capacity) per node."""
        self._forwarders = [forwarder for forwarder, _ in forwarders]
        self._capacity = [max(capacity, 1) for _, capacity in forwarders]
        self._outstanding = [0] * len(forwarders)

    def choose(self) -> int:
        """Index of the node to send the next request to (``balancer.spread``)."""
        running = [forwarder.readiness()[0] > 0 for forwarder in self._forwarders]
        return spread(self._outstanding, self._capacity, running)

    async def __call__(self, request: ForwardedRequest) -> ForwardedResponse:
        chosen = self.choose()
        self._outstanding[chosen] += 1
        try:
            return await self._forwarders[chosen](request)
        finally:
            self._outstanding[chosen] -= 1

    async def start(self, wait_s: float = 0.0) -> None:
        """Nothing to open (Serve handles are made on first use)."""

    def readiness(self) -> tuple[int, int]:
        """(instances running, instances planned) over every node."""
        counts = [forwarder.readiness() for forwarder in self._forwarders]
        return sum(ready for ready, _ in counts), sum(planned for _, planned in counts)

    async def aclose(self) -> None:
        """Stop every node's watcher (``deploy`` shuts Serve down once, after this)."""
        for forwarder in self._forwarders:
            forwarder.stop_watching()
