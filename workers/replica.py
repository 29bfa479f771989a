"""The Ray Serve deployment: one replica per planned instance, pinned to its pool, serving HTTP itself.

All replicas of one model on one node belong to one deployment so that our router sees them together. Each replica
finds its instance by its Serve rank among its node's instances of its model (``spec.serves_model``), has it built
(``assembly.py``: pinned, loaded, calibrated), and builds its own FastAPI app. The front door
(``orchestrator/frontdoor/app.py``) hands each request, whole, to one replica: over the replica's direct lane
(``workers/lane_server.py``, the default ``server.transport: direct``), or through Serve's handle and our router
(``transport: serve``), which calls ``forward``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import ray
from ray import serve

from orchestrator.contracts.errors import Unhealthy
from orchestrator.contracts.forwarding import ForwardedRequest, ForwardedResponse
from orchestrator.contracts.replica_spec import ReplicaSpec
from orchestrator.contracts.snapshot import HUB_NAME, HUB_NAMESPACE, LaneAddress
from workers.asgi_bridge import call_asgi
from workers.assembly import build_instance
from workers.http_api import build_app
from workers.lane_server import LaneServer
from workers.serve_loopback import keep_serve_grpc_on_loopback

logger = logging.getLogger(__name__)

PUSH_PERIOD_S = 1.0


def _find_hub() -> Any | None:
    """The metrics hub actor that ``up`` started, or None (this instance then reports to no one)."""
    try:
        return ray.get_actor(HUB_NAME, namespace=HUB_NAMESPACE)
    except ValueError:
        return None


def _current_rank() -> int:
    rank = serve.get_replica_context().rank
    return int(getattr(rank, "rank", rank))


class EmbeddingReplica:
    """One instance of the model, bound to the planned instance of its rank."""

    # Serve awaits an async constructor on the replica's event loop: the replica is reported running only once its
    # lane listens and is registered, so the front door can connect as soon as Serve says it is up.
    async def __init__(self, spec: ReplicaSpec) -> None:
        if spec.node_id is None:  # one machine: Ray is on loopback only (serving/ray_access.py), so is Serve's
            keep_serve_grpc_on_loopback()
        self._spec = spec
        self._rank = _current_rank()
        self._instance = spec.instance_for_rank(self._rank)
        self._service, self._device_health = build_instance(spec, self._instance)
        self._hub = _find_hub()
        self._push_task: asyncio.Task[None] | None = None
        self._app = build_app(
            self._service,
            self._hub_reports if self._hub is not None else None,
            api_key_sha256=spec.api_key_sha256,
            open_endpoints=spec.open_endpoints,
            models=spec.models(),
        )
        self._lane_server: LaneServer | None = None
        self._lane: LaneAddress | None = None
        if spec.lane_token is not None:
            await self._open_lane(spec.lane_token)
        self._ensure_pushing()
        logger.info("instance %s ready on cores %s", self._instance.name, self._instance.cpu_cores)

    async def _open_lane(self, token: str) -> None:
        """Listen for the front door (this machine only, unless the replica serves a node of a cluster) and register
        the lane with the hub before reporting ready."""
        import ray

        batcher = self._service.batcher

        def stats() -> tuple[float, int]:
            snapshot = batcher.stats()
            return snapshot.load, snapshot.queued_texts

        host = "127.0.0.1" if self._spec.node_id is None else ray.util.get_node_ip_address()
        self._lane_server = LaneServer(self._app, token, self._instance.name, stats, batcher.load_window_s)
        bound_host, port = await self._lane_server.start(host)
        self._lane = {"host": bound_host, "port": port, "incarnation": uuid.uuid4().hex}
        if self._hub is not None:
            await self._hub.push.remote(self._service.labels, self._service.snapshot(), self._lane)
        logger.info("instance %s: direct lane on %s:%d", self._instance.name, bound_host, port)

    async def forward(self, request: ForwardedRequest) -> ForwardedResponse:
        """Answer one HTTP request from the front door with this instance's app (the front door's only call)."""
        return await call_asgi(self._app, request)

    async def _hub_reports(self) -> list[Any]:
        self._ensure_pushing()
        await self._hub.push.remote(self._service.labels, self._service.snapshot(), self._lane)
        return await self._hub.reports.remote()

    def _ensure_pushing(self) -> None:
        if self._hub is not None and (self._push_task is None or self._push_task.done()):
            self._push_task = asyncio.get_running_loop().create_task(self._push_forever())

    async def _push_forever(self) -> None:
        """Send this instance's snapshot to the hub about once a second, off the request path."""
        while True:
            try:
                await self._hub.push.remote(self._service.labels, self._service.snapshot(), self._lane)
            except Exception:  # the hub restarting must not hurt serving
                logger.warning("metrics hub unreachable; retrying", exc_info=True)
            await asyncio.sleep(PUSH_PERIOD_S)

    async def record_routing_stats(self) -> dict[str, Any]:
        """Pulled by the router every stats period: the balancer's load input and the queue."""
        self._ensure_pushing()  # runs on the replica's loop: a convenient place to start the metrics pusher
        stats = self._service.batcher.stats()
        return {"load": stats.load, "queued_texts": stats.queued_texts}

    def record_replica_metadata(self) -> dict[str, Any]:
        """Read once by the router when the replica is ready: what it is and how much it holds."""
        instance = self._instance
        metadata: dict[str, Any] = {
            "instance": instance.name,
            "profile": instance.profile,
            "device": instance.device,
            "cpu_cores": list(instance.cpu_cores),
            "threads": instance.threads,
            "capacity": instance.capacity,
        }
        if instance.gpu is not None:
            gpu = instance.gpu
            metadata.update(
                device_uuid=gpu.device_uuid,
                device_uuids=list(gpu.device_uuids),
                gpu=gpu.gpu_index,
                gpu_uuid=gpu.gpu_uuid,
                gpu_instance_id=gpu.gpu_instance_id,
                sm_count=gpu.sm_count,
                memory_mb=gpu.memory_mb,
            )
        return metadata

    async def __del__(self) -> None:
        """Serve calls this when the replica stops: end the metrics pusher so shutdown does not wait on it."""
        if self._push_task is not None:
            self._push_task.cancel()
        if self._lane_server is not None:
            await self._lane_server.close()
        await self._service.batcher.close()

    def check_health(self) -> None:
        """Serve's health hook: raising makes Serve stop routing to this replica and replace it. A replica serving
        another rank's instance must go, and so must one whose GPU failed with a sticky CUDA error (its CUDA context
        cannot compute again in this process)."""
        if _current_rank() != self._rank:
            raise Unhealthy(f"replica rank changed from {self._rank}: it no longer matches its pinned instance")
        self._device_health.check()
