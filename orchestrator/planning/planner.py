"""Pure placement: (config, topology) -> plan of instances.

No I/O and no heavy imports: the same function runs under ``orchestrator plan`` (validate and print), under
``orchestrator up`` (then deploy), and in unit tests with hand-made topologies. Each planned instance carries
everything its replica needs to pin itself and size its batcher, so the replica never re-reads the config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from orchestrator.capabilities import BASE_INSTALL, Capabilities
from orchestrator.config import Config, InstanceConfig
from orchestrator.contracts.errors import PlanError
from orchestrator.contracts.plan import GpuBinding, Plan, PlannedInstance
from orchestrator.hardware.topology import Topology
from orchestrator.model_config import ModelConfig
from orchestrator.model_source import ModelFootprint

# Requests one compute thread is sized to hold at once. The balancer divides outstanding requests by this
# capacity, and it sets how many requests Serve lets a replica hold; each replica's bounded text queue still
# refuses work beyond ``batching.max_queued_texts`` with 429.
REQUESTS_PER_THREAD = 8

# What the planner knows of the models' sizes: one footprint (the default model's: a one-model config), or each
# model's by its served name.
Footprints = ModelFootprint | Mapping[str, ModelFootprint] | None


def model_key(model: ModelConfig) -> str:
    """The name a planned instance carries for its model ("" for an unnamed one-model config before resolving)."""
    return model.name or ""


def footprint_for(footprints: Footprints, config: Config, model: ModelConfig) -> ModelFootprint | None:
    """The footprint of ``model``, or None when unknown."""
    if footprints is None:
        return None
    if isinstance(footprints, ModelFootprint):
        return footprints if model is config.model or model_key(model) == model_key(config.model) else None
    return footprints.get(model_key(model))


def _cpu_pool_shape(config: Config, wanted: int, num_cores: int) -> tuple[int, int]:
    """(pool count, threads per pool) from the config, deriving 'auto' values from the cores."""
    pools = config.cpu_pools
    if pools.count == "auto" and pools.threads_per_pool == "auto":
        count = max(1, min(wanted, num_cores))
        return count, max(1, num_cores // count)
    if pools.count == "auto":
        assert isinstance(pools.threads_per_pool, int)
        threads = pools.threads_per_pool
        return max(1, min(wanted, num_cores // threads)), threads
    if pools.threads_per_pool == "auto":
        return pools.count, max(1, num_cores // pools.count)
    return pools.count, pools.threads_per_pool


def planned_instance(
    config: Config,
    instance: InstanceConfig,
    rank: int,
    *,
    device: str,
    cpu_cores: tuple[int, ...],
    threads: int,
    capacity: int,
    gpu: GpuBinding | None = None,
) -> PlannedInstance:
    """A PlannedInstance with the batching settings of the config and the instance."""
    batching = config.batching
    overhead = batching.batch_overhead_tokens
    return PlannedInstance(
        rank=rank,
        name=instance.name,
        profile=instance.type,
        device=device,
        cpu_cores=cpu_cores,
        threads=threads,
        batch_size=instance.batch_size,
        max_concurrency=instance.max_concurrency,
        max_batch_tokens=batching.max_batch_tokens,
        max_wait_ms=batching.max_wait_ms,
        max_queued_texts=batching.max_queued_texts,
        capacity=capacity,
        batch_overhead_tokens=None if overhead == "auto" else float(overhead),
        gpu=gpu,
        model=model_key(config.model_for(instance)),
    )


def plan_cpu_pools(
    config: Config, topology: Topology, instances: list[InstanceConfig], first_rank: int = 0
) -> tuple[list[PlannedInstance], list[str]]:
    """Map ``instances``, in order, onto CPU pools of consecutive cores.

    Instance i takes pool i; instances beyond the pool count are not placed and a note says how to place them.
    """
    cores = topology.cpu.cores
    count, threads = _cpu_pool_shape(config, len(instances), len(cores))
    notes: list[str] = []
    if count * threads > len(cores):
        notes.append(f"{count} pools x {threads} threads oversubscribe the {len(cores)} cores: expect slower answers")
    planned = []
    for offset, instance in enumerate(instances[:count]):
        first = offset * threads
        pool_cores = tuple(cores[(first + n) % len(cores)] for n in range(threads))
        planned.append(
            planned_instance(
                config,
                instance,
                first_rank + offset,
                device="cpu",
                cpu_cores=pool_cores,
                threads=threads,
                capacity=REQUESTS_PER_THREAD * threads,
            )
        )
    for instance in instances[count:]:
        notes.append(
            f"instance {instance.name!r} not placed: {count} CPU pool(s) of {threads} thread(s) fill the "
            f"{len(cores)} cores (set cpu_pools.count: {len(instances)} to place every instance)"
        )
    if count > len(instances):
        notes.append(f"{count - len(instances)} CPU pool(s) unused: no instance left to place on them")
    return planned, notes


def check_engine(
    config: Config,
    planned: list[PlannedInstance],
    footprints: Footprints,
    capabilities: Capabilities,
) -> tuple[list[PlannedInstance], list[str]]:
    """Choose each instance's backend and refuse, one line each, overrides that cannot work on its device
    (dtype, attention, backend, quantisation) or without the optional packages ``capabilities`` says import where
    the instances run, a tensor_parallel_size the model's heads do not allow, and an instance spanning several GPUs
    that cannot be split. Each model is checked with its own settings and shape.

    Returns the instances with their backend set, and one line per model and device kind saying which backend and
    why (the model named only when the config has several).
    """
    models = {model_key(m): m for m in config.served_models()}
    problems: list[str] = []
    lines: list[str] = []
    backends: dict[tuple[str, str], str] = {}
    for key, model in models.items():
        mine = [p for p in planned if p.model == key]
        if not mine:
            continue
        footprint = footprint_for(footprints, config, model)
        where = f"models[{list(models).index(key)}] ({key})" if len(models) > 1 else "model"
        chosen, model_lines, model_problems = _check_model_engine(model, mine, footprint, capabilities, where)
        backends.update({(key, device): backend for device, backend in chosen.items()})
        lines += [f"{key}: {line}" if len(models) > 1 else line for line in model_lines]
        problems += model_problems
    if problems:
        raise PlanError("\n".join(problems))
    return [dataclasses.replace(p, backend=backends[(p.model, _device_kind(p))]) for p in planned], lines


def _device_kind(instance: PlannedInstance) -> str:
    return "cpu" if instance.gpu is None else "cuda"


def _check_model_engine(
    model: ModelConfig,
    planned: list[PlannedInstance],
    footprint: ModelFootprint | None,
    capabilities: Capabilities,
    where: str,
) -> tuple[dict[str, str], list[str], list[str]]:
    """(backend per device kind, lines saying why, problems) for one model's instances."""
    from orchestrator.planning.engine_choice import (
        EngineChoiceError,
        check_device_map,
        check_tensor_parallel,
        choose_backend,
        choose_engine,
    )

    model_type = footprint.model_type if footprint is not None else "unknown"
    problems = []
    backends: dict[str, str] = {}
    lines = []
    for device in sorted({_device_kind(p) for p in planned}):
        who = [p.name for p in planned if _device_kind(p) == device]
        try:
            choice = choose_backend(device, model_type, model.backend, model.quantize, capabilities.onnx)
            if choice.backend == "torch":
                choose_engine(device, model_type, model.dtype, model.attn_implementation, capabilities.flash_attn)
            backends[device] = choice.backend
            quantized = " (int8)" if model.quantize == "int8" else ""
            lines.append(f"backend {choice.backend}{quantized} for {', '.join(who)}: {choice.reason}")
        except EngineChoiceError as error:
            problems.append(f"{where}: {error} (instances {', '.join(who)})")
    try:
        heads = footprint.attention_heads if footprint is not None else None
        kv_heads = footprint.key_value_heads if footprint is not None else None
        check_tensor_parallel(model.tensor_parallel_size, heads, kv_heads)
    except EngineChoiceError as error:
        problems.append(
            f"{where}: tensor_parallel_size: {error}" if where != "model" else f"model.tensor_parallel_size: {error}"
        )
    for instance in planned:
        gpus = instance.gpu.device_count if instance.gpu is not None else 1
        if gpus == 1:
            continue
        try:
            check_device_map(gpus, model_type, capabilities.accelerate)
        except EngineChoiceError as error:
            problems.append(f"instance {instance.name!r}: {error}")
    return backends, lines, problems


def broken_driver_problem(config: Config, topology: Topology) -> str | None:
    """Why a config that asks for GPUs cannot be planned on a machine whose NVIDIA driver is broken, or None.

    Only "no driver installed" means a CPU machine; a driver that is there but fails (not loaded, version mismatch
    after an upgrade...) must be fixed, not silently replaced by CPU pools (gpu-audit W4).
    """
    wanted = [i for i in config.mig_instances if i.type != "cpu"]
    if topology.gpu_error is None or not wanted:
        return None
    names = ", ".join(f"{i.name!r} ({i.type})" for i in wanted)
    return (
        f"instances {names} need a GPU, but NVML failed on this machine: {topology.gpu_error}. Fix the driver and run "
        "orchestrator doctor, or set type: cpu to serve on CPU pools"
    )


def plan(
    config: Config,
    topology: Topology,
    footprint: Footprints = None,
    capabilities: Capabilities = BASE_INSTALL,
) -> Plan:
    """Place every configured instance on the hardware found.

    Without GPUs every instance is mapped onto a CPU pool (its ``type`` is kept for display), unless the NVIDIA
    driver is installed but broken and the config asks for GPUs (PlanError with the reason and the fix). With GPUs,
    ``cpu`` instances take CPU pools, ``gpu`` instances take ``gpus`` whole GPUs without MIG, and every other
    instance takes a free MIG slice of its profile (see ``orchestrator/planning/mig_planner.py``). ``capabilities``
    are what imports where the replicas will run (``capabilities.detect()`` for this machine; the default is a plain
    install). ``type: auto`` takes the smallest free MIG slice whose memory fits its model (a CPU pool on a machine
    without GPU). ``footprint`` is the default model's, or every model's by name (``LoadedConfig.footprints()``).
    Raises PlanError, one line per problem, when the config cannot be placed, or when a model is left without an
    instance.
    """
    if not topology.gpus:
        broken = broken_driver_problem(config, topology)
        if broken is not None:
            raise PlanError(broken)
        planned, notes = plan_cpu_pools(config, topology, list(config.mig_instances))
        if not planned:
            raise PlanError("no instance could be placed on the CPU pools")
        check_every_model_placed(config, planned)
        planned, lines = check_engine(config, planned, footprint, capabilities)
        return Plan(instances=tuple(planned), device_kind="cpu", notes=tuple(notes), backend_lines=tuple(lines))

    from orchestrator.planning.mig_planner import plan_gpu_instances

    gpu_instances = [i for i in config.mig_instances if i.type != "cpu"]
    cpu_instances = [i for i in config.mig_instances if i.type == "cpu"]
    planned, notes = plan_gpu_instances(config, topology, gpu_instances, footprint)
    if cpu_instances:
        cpu_planned, cpu_notes = plan_cpu_pools(config, topology, cpu_instances, first_rank=len(planned))
        planned += cpu_planned
        notes += cpu_notes
    check_every_model_placed(config, planned)
    planned, lines = check_engine(config, planned, footprint, capabilities)
    kinds = sorted({p.device for p in planned}, key=["mig", "gpu", "cpu"].index)
    return Plan(instances=tuple(planned), device_kind="+".join(kinds), notes=tuple(notes), backend_lines=tuple(lines))


def check_every_model_placed(config: Config, planned: list[PlannedInstance]) -> None:
    """Raise PlanError (one line per model) when a model of the config has no placed instance: requests naming it
    would have nowhere to go."""
    placed = {p.model for p in planned}
    missing = [model_key(m) for m in config.served_models() if model_key(m) not in placed]
    if missing and len(config.served_models()) > 1:
        raise PlanError(
            "\n".join(
                f"model {name!r}: none of its instances could be placed (see the notes: more CPU pools, or free "
                "slices, are needed)"
                for name in missing
            )
        )
