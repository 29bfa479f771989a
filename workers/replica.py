"""The Ray Serve deployment: one replica per planned instance, pinned to its pool, serving HTTP itself.

All replicas belong to one deployment so that our router sees them together. Each replica finds its instance by its
Serve rank (``plan.instances[rank]``), pins itself to that instance's cores, loads the model, and builds its own
FastAPI app. The front door (``orchestrator/frontdoor/app.py``) hands each request, whole, to one replica: over the
replica's direct lane (``workers/lane_server.py``, the default ``server.transport: direct``), or through Serve's
handle and our router (``transport: serve``), which calls ``forward``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import serve

from orchestrator.contracts.errors import Unhealthy
from orchestrator.contracts.forwarding import ForwardedRequest, ForwardedResponse
from orchestrator.contracts.plan import Plan, PlannedInstance
from orchestrator.contracts.snapshot import HUB_NAME, HUB_NAMESPACE, LaneAddress
from workers.asgi_bridge import call_asgi
from workers.http_api import build_app
from workers.lane_server import LaneServer
from workers.serve_loopback import keep_serve_grpc_on_loopback

logger = logging.getLogger(__name__)

PUSH_PERIOD_S = 1.0


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything a replica needs, decided by the planner and the config (pickled to each replica)."""

    plan: Plan
    node_id: str | None  # the node whose instances this deployment serves (None: the only machine)
    model_folder: str
    model_name: str
    pooling: str
    dtype: str
    attn_implementation: str
    padding_side: str
    prompts: dict[str, str]
    default_prompt_name: str | None
    quantize: str
    onnx_cache_dir: str | None
    max_input_tokens: int | None
    normalize: bool
    max_inputs_per_request: int
    max_request_bytes: int
    api_key_sha256: str | None = None
    open_endpoints: tuple[str, ...] = ("health", "metrics")
    request_timeout_s: float | None = 60.0
    lane_token: str | None = None  # set: open a direct lane for the front door (transport "direct")


def _find_hub() -> Any | None:
    """The metrics hub actor that ``up`` started, or None (this instance then reports to no one)."""
    try:
        return ray.get_actor(HUB_NAME, namespace=HUB_NAMESPACE)
    except ValueError:
        return None


def _current_rank() -> int:
    rank = serve.get_replica_context().rank
    return int(getattr(rank, "rank", rank))


def build_instance_service(spec: ReplicaSpec, instance: PlannedInstance) -> Any:
    """Pin to the instance's pool, load the model and return its EmbeddingService."""
    from workers.batcher import Batcher
    from workers.calibration import measure_batch_overhead_tokens
    from workers.instance_metrics import InstanceMetrics
    from workers.model_card import read_model_card
    from workers.pinning import pin_to_cpu_pool, pin_to_gpu_devices
    from workers.service import EmbeddingService, ServiceInfo
    from workers.tokenizer import TextTokenizer

    device = "cpu"
    if instance.gpu is not None:
        pin_to_gpu_devices(instance.gpu.device_uuids)  # before anything touches CUDA
        device = "cuda"
    pin_to_cpu_pool(instance.cpu_cores, instance.threads, torch_threads=instance.backend == "torch")
    folder = Path(spec.model_folder)
    card = read_model_card(folder, spec.pooling, spec.max_input_tokens, spec.prompts, spec.default_prompt_name)
    tokenizer = TextTokenizer(folder, card.max_input_tokens, card.eos_token_id if card.pooling == "lasttoken" else None)
    backend = load_backend(spec, instance, card, device)
    # One warm-up forward so the first client does not pay for lazy initialisation, then (unless configured) the
    # fixed cost of a forward pass, which sets where the batcher cuts length-sorted texts into batches.
    row = tokenizer.encode(["calibrating the batcher " * 5], truncate=True)[0]
    overhead = instance.batch_overhead_tokens
    if overhead is None:
        overhead = measure_batch_overhead_tokens(backend.embed, row)
    else:
        backend.embed([row])
    logger.info("instance %s: a forward pass costs as much as %.0f padded tokens", instance.name, overhead)
    metrics = InstanceMetrics()
    batcher = Batcher(
        backend.embed,
        max_batch_size=instance.batch_size,
        max_batch_tokens=instance.max_batch_tokens,
        max_wait_ms=instance.max_wait_ms,
        max_queued_texts=instance.max_queued_texts,
        max_concurrency=instance.max_concurrency,
        batch_overhead_tokens=overhead,
        on_batch=lambda record: metrics.batch_done(record.texts, record.padded_tokens, record.seconds),
    )
    info = ServiceInfo(
        model_name=spec.model_name,
        instance=instance.name,
        max_input_tokens=card.max_input_tokens,
        max_batch_tokens=instance.max_batch_tokens,
        max_inputs_per_request=spec.max_inputs_per_request,
        max_request_bytes=spec.max_request_bytes,
        normalize_by_default=spec.normalize,
        pooling=card.pooling,
        backend=backend.info,
        prompts=card.prompts,
        default_prompt_name=card.default_prompt_name,
        request_timeout_s=spec.request_timeout_s,
    )
    memory_probe: Any = None
    if instance.gpu is not None:  # the slice's (or GPUs') memory from NVML; CPU pools report process memory
        from orchestrator.hardware.nvml_memory import devices_memory_probe

        memory_probe = devices_memory_probe(instance.gpu.device_uuids)
    return EmbeddingService(
        tokenizer,
        batcher,
        info,
        metrics=metrics,
        labels=metric_labels(spec, instance),
        capacity=instance.capacity,
        **({"memory_probe": memory_probe} if memory_probe is not None else {}),
    )


def load_backend(spec: ReplicaSpec, instance: PlannedInstance, card: Any, device: str) -> Any:
    """The planned backend: ONNX Runtime from the export cache (exporting on a cold cache), or PyTorch."""
    if instance.backend == "onnx":
        from workers.onnx_backend import OnnxBackend
        from workers.onnx_export import OnnxExportError, cached_graph

        cache_dir = Path(spec.onnx_cache_dir) if spec.onnx_cache_dir else None
        graph = cached_graph(Path(spec.model_folder), cache_dir, spec.quantize)
        if graph.exported_now:
            logger.warning(
                "exported %s to ONNX in %.1f s (cached for next starts)", spec.model_name, graph.export_seconds
            )

        def backend_for(path: Path) -> OnnxBackend:
            int8 = spec.quantize == "int8"
            return OnnxBackend(path, card.pooling, instance.threads, card.pad_token_id, card.hidden_size, int8)

        try:
            return backend_for(graph.path)
        except Exception as error:
            if graph.exported_now:
                raise OnnxExportError(f"the exported ONNX graph does not load: {error}") from None
            # A cached graph that does not load (its manifest matching a damaged or foreign file): rebuilt once.
            logger.warning("cached ONNX graph %s does not load (%s): rebuilding it", graph.path, error)
            graph = cached_graph(Path(spec.model_folder), cache_dir, spec.quantize, discard_sha256=graph.sha256)
            return backend_for(graph.path)
    from orchestrator.capabilities import detect
    from orchestrator.planning.engine_choice import choose_engine
    from workers.backend import TorchBackend

    # Looked up here, in the replica's own process: the model loads in this environment, not the planner's.
    flash_attn = detect().flash_attn
    engine = choose_engine(device, card.model_type, spec.dtype, spec.attn_implementation, flash_attn)
    device_map = None
    if instance.gpu is not None and instance.gpu.device_count > 1:
        from workers.device_map import balanced_device_map, visible_free_memory

        device_map = balanced_device_map(Path(spec.model_folder), engine.dtype, visible_free_memory())
        logger.info("instance %s: layers split over %d GPUs: %s", instance.name, instance.gpu.device_count, device_map)
    return TorchBackend(
        Path(spec.model_folder),
        card.pooling,
        engine.dtype,
        device,
        engine.attn_implementation,
        spec.padding_side,
        device_map=device_map,
    )


def metric_labels(spec: ReplicaSpec, instance: PlannedInstance) -> dict[str, str]:
    """The instance's identity on every metric; GPU instances carry dcgm-exporter's label names and values."""
    import socket

    labels = {
        "instance": instance.name,
        "model": spec.model_name,
        "node": socket.gethostname(),
        "device_kind": instance.device,
    }
    if instance.gpu is not None:
        gpu = instance.gpu
        labels.update(
            gpu=str(gpu.gpu_index),
            UUID=gpu.gpu_uuid,
            GPU_I_ID="" if gpu.gpu_instance_id is None else str(gpu.gpu_instance_id),
            GPU_I_PROFILE=gpu.profile if gpu.kind == "mig" else "",
        )
    return labels


class EmbeddingReplica:
    """One instance of the model, bound to the planned instance of its rank."""

    # Serve awaits an async constructor on the replica's event loop: the replica is reported running only once its
    # lane listens and is registered, so the front door can connect as soon as Serve says it is up.
    async def __init__(self, spec: ReplicaSpec) -> None:
        if spec.node_id is None:  # one machine: Ray is on loopback only (serving/ray_access.py), so is Serve's
            keep_serve_grpc_on_loopback()
        self._spec = spec
        self._rank = _current_rank()
        self._instance = spec.plan.instance_for_node_rank(spec.node_id, self._rank)
        self._service = build_instance_service(spec, self._instance)
        self._hub = _find_hub()
        self._push_task: asyncio.Task[None] | None = None
        self._app = build_app(
            self._service,
            self._hub_reports if self._hub is not None else None,
            api_key_sha256=spec.api_key_sha256,
            open_endpoints=spec.open_endpoints,
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

        def stats() -> tuple[float, int]:
            snapshot = self._service.batcher.stats()
            return snapshot.load, snapshot.queued_texts

        host = "127.0.0.1" if self._spec.node_id is None else ray.util.get_node_ip_address()
        self._lane_server = LaneServer(self._app, token, self._instance.name, stats)
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
        """Serve may reassign ranks; a replica serving another rank's instance must be replaced."""
        if _current_rank() != self._rank:
            raise Unhealthy(f"replica rank changed from {self._rank}: it no longer matches its pinned instance")
