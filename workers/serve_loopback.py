"""Keep Serve's inter-deployment gRPC server of this replica on loopback when the service runs on one machine.

Ray Serve 2.60 starts a gRPC server in every replica (handle calls arrive there) and binds it to ``[::]:0``, every
interface, whatever the node address is (``ray/serve/_private/replica.py``, ``_on_initialized``). Ray's token
authentication guards it, but on one machine nothing of Ray should be reachable from the network at all
(``orchestrator/serving/ray_access.py`` puts every other Ray server on loopback). Handles reach a replica at its node's
address, which is 127.0.0.1 in that mode, so binding the server there changes nothing for them.

This replaces one name in Serve's replica module, in the replica's own process, before Serve starts that server (the
user's constructor runs first). ``ray[serve]`` is pinned to 2.60.x; the local-user integration test fails if a Ray
release moves the bind elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

WILDCARD_PREFIX = "[::]:"
LOOPBACK_PREFIX = "127.0.0.1:"


def loopback_only(add_port: Callable[[Any, str], int]) -> Callable[[Any, str], int]:
    """``add_port`` with a wildcard address replaced by 127.0.0.1 (same port); other addresses pass unchanged."""

    def add_port_on_loopback(server: Any, address: str) -> int:
        if address.startswith(WILDCARD_PREFIX):
            address = LOOPBACK_PREFIX + address.removeprefix(WILDCARD_PREFIX)
        return add_port(server, address)

    add_port_on_loopback.wrapped = add_port  # type: ignore[attr-defined]
    return add_port_on_loopback


def keep_serve_grpc_on_loopback() -> None:
    """Make this replica's Serve gRPC server bind 127.0.0.1 (idempotent)."""
    from ray.serve._private import replica

    if not hasattr(replica.add_port_to_grpc_server, "wrapped"):
        replica.add_port_to_grpc_server = loopback_only(replica.add_port_to_grpc_server)
