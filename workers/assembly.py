"""How one instance is put together in its replica: pin to the slice or pool, read the model card, load the
tokenizer and the planned backend, warm it up and calibrate the batcher, and wire the service with its metrics and
the health of its device. An embedding model becomes an EmbeddingService; a reranker (``model.task: rerank``) a
RerankService, with its cross-encoder card, pair tokenizer and backend, and the same batcher. A folder carrying the
ingress benchmark's marker (``workers/backends/null_backend.py``) gets no model: the placeholder backend, served under
its own loud name.

It knows nothing of Ray or Serve (``replica.py`` is the deployment and calls ``build_instance`` once per replica), so
each step is testable with a plan and a model folder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from orchestrator.contracts.plan import PlannedInstance
from orchestrator.contracts.replica_spec import ReplicaSpec
from workers.device_health import DeviceHealth

logger = logging.getLogger(__name__)


class BuiltInstance(NamedTuple):
    """A ready instance: the service that answers requests, and the health of the device it computes on."""

    service: Any  # workers.service.EmbeddingService, or workers.rerank_service.RerankService
    health: DeviceHealth


def build_instance_service(spec: ReplicaSpec, instance: PlannedInstance) -> Any:
    """Pin to the instance's pool, load the model and return its EmbeddingService (see ``build_instance``)."""
    return build_instance(spec, instance).service


def build_instance(spec: ReplicaSpec, instance: PlannedInstance) -> BuiltInstance:
    """Pin to the instance's pool or GPU, load the model and return its service (an EmbeddingService, or a
    RerankService for ``model.task: rerank``) and DeviceHealth.

    Every batch (warm-up and calibration included) runs through the health guard: a sticky CUDA error marks the
    device lost and later batches are refused. Raises PinningError, EngineChoiceError and the loaders' errors.
    """
    from workers.backends.null_backend import is_ingress_bench_folder
    from workers.pinning import pin_to_binding, pin_to_cpu_pool

    no_model = is_ingress_bench_folder(Path(spec.model_folder))
    if no_model and spec.task != "embed":
        raise ValueError(f"instance {instance.name}: the ingress benchmark's folder serves embeddings only")
    device = "cpu"
    if instance.gpu is not None:
        recognised_by = pin_to_binding(instance.gpu)  # before anything touches CUDA
        logger.info("instance %s: pinned to %s (%s)", instance.name, ",".join(instance.gpu.device_uuids), recognised_by)
        device = "cuda"
    health = DeviceHealth(f"{device} device of instance {instance.name}")
    torch_threads = instance.backend == "torch" and not no_model  # without a model, torch is never imported
    pin_to_cpu_pool(instance.cpu_cores, instance.threads, torch_threads=torch_threads)
    if spec.task == "rerank":
        return BuiltInstance(_build_reranker(spec, instance, device, health), health)
    return BuiltInstance(_build_embedder(spec, instance, device, health, no_model), health)


def _build_embedder(
    spec: ReplicaSpec, instance: PlannedInstance, device: str, health: DeviceHealth, no_model: bool = False
) -> Any:
    from workers.model_card import read_model_card
    from workers.service import EmbeddingService
    from workers.tokenizer import TextTokenizer

    folder = Path(spec.model_folder)
    card = read_model_card(folder, spec.pooling, spec.max_input_tokens, spec.prompts, spec.default_prompt_name)
    tokenizer = TextTokenizer(folder, card.max_input_tokens, card.eos_token_id if card.pooling == "lasttoken" else None)
    if no_model:
        backend, instance = _ingress_bench_backend(spec, instance, card.hidden_size)
    else:
        backend = load_backend(spec, instance, card, device)
    row = tokenizer.encode(["calibrating the batcher " * 5], truncate=True)[0]
    batcher, metrics = _calibrated_batcher(instance, health.guard(backend.embed), row)
    info = _service_info(spec, instance, card.max_input_tokens, backend.info, card.pooling)
    info = replace(info, prompts=card.prompts, default_prompt_name=card.default_prompt_name)
    if no_model:
        from workers.backends.null_backend import SERVED_NAME

        info = replace(info, model_name=SERVED_NAME)
    return EmbeddingService(
        tokenizer, batcher, info, metrics, metric_labels(spec, instance), instance.capacity, **_memory_probe(instance)
    )


def _ingress_bench_backend(spec: ReplicaSpec, instance: PlannedInstance, dimensions: int) -> tuple[Any, Any]:
    """The placeholder backend of the ingress benchmark, and the instance with the batcher's cut fixed.

    A placeholder batch costs its fixed hop and nothing per token, so the batcher should merge everything waiting
    into one batch: the most a forward pass may cost in tokens (timing a free call would only give a random cut).
    """
    from workers.backends.null_backend import MARKER_FILE, SERVED_NAME, NullBackend
    from workers.calibration import MAX_OVERHEAD_TOKENS

    logger.warning(
        "instance %s: INGRESS BENCHMARK, NO MODEL: %s carries %s; this replica answers placeholder vectors "
        "(one-hot of the token count), served as %r. Never serve this folder to clients.",
        instance.name,
        spec.model_folder,
        MARKER_FILE,
        SERVED_NAME,
    )
    if instance.batch_overhead_tokens is None:
        instance = replace(instance, batch_overhead_tokens=MAX_OVERHEAD_TOKENS)
    return NullBackend(dimensions), instance


def _build_reranker(spec: ReplicaSpec, instance: PlannedInstance, device: str, health: DeviceHealth) -> Any:
    from workers.backends.cross_encoder import CrossEncoderBackend
    from workers.rerank_card import read_rerank_card
    from workers.rerank_service import RerankService
    from workers.rerank_tokenizer import PairTokenizer

    # config.py makes a reranker's backend torch. The device map of a split model names the layers of an embedding
    # model (device_map.py), not a classifier's: a reranker stays on one device.
    if instance.backend != "torch" or (instance.gpu is not None and instance.gpu.device_count > 1):
        raise ValueError(f"instance {instance.name}: a reranker runs on PyTorch on one device (gpus: 1)")
    folder = Path(spec.model_folder)
    card = read_rerank_card(folder, spec.max_input_tokens)
    tokenizer = PairTokenizer(folder, card.max_input_tokens)
    engine = _torch_engine(spec, instance, card.model_type, device)
    backend = CrossEncoderBackend(
        folder, card.pad_token_id, card.reads_token_type_ids, engine.dtype, device, engine.attn_implementation
    )
    row = tokenizer.encode_pairs("calibrating the batcher", ["calibrating the batcher " * 5], truncate=True)[0]
    batcher, metrics = _calibrated_batcher(instance, health.guard(backend.embed), row)
    info = _service_info(spec, instance, card.max_input_tokens, backend.info, "none")
    return RerankService(
        tokenizer,
        batcher,
        replace(info, normalize_by_default=False),
        card.activation,
        metrics,
        metric_labels(spec, instance),
        instance.capacity,
        **_memory_probe(instance),
    )


def _calibrated_batcher(instance: PlannedInstance, run: Callable[[Any], Any], row: Sequence[int]) -> tuple[Any, Any]:
    """The instance's batcher in front of ``run``, and the metrics its batches are counted in.

    One warm-up forward so the first client does not pay for lazy initialisation, then (unless configured) the fixed
    cost of a forward pass, which sets where the batcher cuts length-sorted rows into batches.
    """
    from workers.batcher import Batcher
    from workers.calibration import measure_batch_overhead_tokens
    from workers.instance_metrics import InstanceMetrics

    overhead = instance.batch_overhead_tokens
    if overhead is None:
        overhead = measure_batch_overhead_tokens(run, row)
    else:
        run([row])
    logger.info("instance %s: a forward pass costs as much as %.0f padded tokens", instance.name, overhead)
    metrics = InstanceMetrics()
    batcher = Batcher(
        run,
        max_batch_size=instance.batch_size,
        max_batch_tokens=instance.max_batch_tokens,
        max_wait_ms=instance.max_wait_ms,
        max_queued_texts=instance.max_queued_texts,
        max_concurrency=instance.max_concurrency,
        batch_overhead_tokens=overhead,
        on_batch=lambda record: metrics.batch_done(record.texts, record.padded_tokens, record.seconds),
    )
    return batcher, metrics


def _service_info(
    spec: ReplicaSpec, instance: PlannedInstance, max_input_tokens: int, backend: Any, pooling: str
) -> Any:
    from workers.service import ServiceInfo

    return ServiceInfo(
        model_name=spec.model_name,
        instance=instance.name,
        max_input_tokens=max_input_tokens,
        max_batch_tokens=instance.max_batch_tokens,
        max_inputs_per_request=spec.max_inputs_per_request,
        max_request_bytes=spec.max_request_bytes,
        normalize_by_default=spec.normalize,
        pooling=pooling,
        backend=backend,
        request_timeout_s=spec.request_timeout_s,
        accept_token_ids=spec.accept_token_ids,
        auto_truncate=spec.auto_truncate,
        task=spec.task,
    )


def _memory_probe(instance: PlannedInstance) -> dict[str, Any]:
    """The slice's (or GPUs') memory from NVML for a GPU instance; nothing for CPU pools (process memory)."""
    if instance.gpu is None:
        return {}
    from orchestrator.hardware.nvml_memory import devices_memory_probe

    return {"memory_probe": devices_memory_probe(instance.gpu.device_uuids)}


def load_backend(spec: ReplicaSpec, instance: PlannedInstance, card: Any, device: str) -> Any:
    """The planned backend: ONNX Runtime from the export cache (exporting on a cold cache), or PyTorch."""
    if instance.backend == "onnx":
        from workers.backends.onnx_backend import OnnxBackend
        from workers.backends.onnx_export import OnnxExportError, cached_graph

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
    from workers.backends.torch_backend import TorchBackend

    folder = Path(spec.model_folder)
    engine = _torch_engine(spec, instance, card.model_type, device)
    device_map = None
    if instance.gpu is not None and instance.gpu.device_count > 1:
        from workers.backends.device_map import balanced_device_map, visible_free_memory

        device_map = balanced_device_map(folder, engine.dtype, visible_free_memory())
        logger.info("instance %s: layers split over %d GPUs: %s", instance.name, instance.gpu.device_count, device_map)
    return TorchBackend(
        folder,
        card.pooling,
        engine.dtype,
        device,
        engine.attn_implementation,
        spec.padding_side,
        device_map=device_map,
    )


def _torch_engine(spec: ReplicaSpec, instance: PlannedInstance, model_type: str, device: str) -> Any:
    """The dtype and attention implementation PyTorch runs the model with here (an EngineChoice)."""
    from orchestrator.capabilities import detect
    from orchestrator.planning.engine_choice import choose_engine
    from workers.backends.gpu_probe import FLASH_NOT_INSTALLED, probe_gpu, trained_dtype

    if device == "cpu":
        # Looked up here, in the replica's own process: the model loads in this environment, not the planner's.
        return choose_engine(device, model_type, spec.dtype, spec.attn_implementation, detect().flash_attn)
    # Decided where the GPU is seen: its capability, and whether flash attention really loads here (B5, W8).
    facts = probe_gpu()
    engine = choose_engine(
        device,
        model_type,
        spec.dtype,
        spec.attn_implementation,
        facts.flash_problem is None,
        compute_capability=facts.capability,
        trained_dtype=trained_dtype(Path(spec.model_folder)),
    )
    note = engine.note
    if note and facts.flash_problem is not None:
        note = f"{note}: {facts.flash_problem}"
    # A flash-attn that is installed but does not work is worth a warning; one that is absent is a choice.
    broken = bool(engine.note) and facts.flash_problem not in (None, FLASH_NOT_INSTALLED)
    logger.log(
        logging.WARNING if broken else logging.INFO,
        "instance %s on %s (sm%d%d): %s, %s attention%s",
        instance.name,
        facts.name,
        *facts.capability,
        engine.dtype,
        engine.attn_implementation,
        f" ({note})" if note else "",
    )
    return engine


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
