"""Pure GPU placement: configured instances -> MIG slices (by profile name) and whole GPUs.

Profile names are resolved against each GPU's own table, because the same name means different profiles on
different GPUs (``1g.10gb`` is id 15 on A100-40GB, id 19 on A100-80GB). Every problem becomes one line that says
what exists and what to do; all problems are collected before raising, so a user fixes them in one pass.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from orchestrator.config import Config, InstanceConfig
from orchestrator.contracts.errors import PlanError
from orchestrator.hardware.topology import GpuInfo, MigSlice, Topology
from orchestrator.model_config import ModelConfig
from orchestrator.model_source import ModelFootprint
from orchestrator.planning.memory_estimate import estimate_memory, fit_problem
from orchestrator.planning.planner import Footprints, GpuBinding, PlannedInstance, footprint_for, planned_instance

# Capacity (requests a replica is sized to hold) per streaming multiprocessor pair: a 1g slice of an A100 (14 SMs)
# holds 7, a 3g slice (42 SMs) 21, so the balancer sends a 3g slice about three times the work of a 1g slice.
SMS_PER_REQUEST_SLOT = 2
# A whole GPU without MIG whose SM count NVML does not report (it is only reported for MIG devices).
WHOLE_GPU_DEFAULT_SMS = 128

_RUNTIME_DTYPE_BYTES = {"auto": 2, "float16": 2, "bfloat16": 2, "float32": 4}


def capacity_for_sms(sm_count: int) -> int:
    """Requests a device with ``sm_count`` SMs is sized to hold (at least 1)."""
    return max(1, round(sm_count / SMS_PER_REQUEST_SLOT))


def _describe_free(free: dict[int, list[MigSlice]]) -> str:
    parts = []
    for gpu_index, slices in free.items():
        if slices:
            names = ", ".join(s.profile for s in slices)
            parts.append(f"GPU {gpu_index}: {names}")
    return "; ".join(parts) or "none"


def _mig_state_problem(gpus: tuple[GpuInfo, ...]) -> str | None:
    """Why no MIG slice can be used at all, or None when some GPU has MIG enabled."""
    if any(g.mig_enabled and not g.mig_reset_pending for g in gpus):
        return None
    pending = [g for g in gpus if g.mig_reset_pending]
    if pending:
        g = pending[0]
        return (
            f"GPU {g.index} ({g.name}) has a MIG mode change waiting for a GPU reset: "
            f"run sudo nvidia-smi -r -i {g.index} (or reboot), then create the slices (orchestrator mig plan)"
        )
    capable = [g for g in gpus if g.mig_supported]
    if capable:
        g = capable[0]
        return (
            f"MIG is disabled on GPU {g.index} ({g.name}): enable it with sudo nvidia-smi -i {g.index} -mig 1 "
            "(A100/A30 also need a GPU reset), then create the slices (orchestrator mig plan)"
        )
    names = ", ".join(sorted({g.name for g in gpus}))
    return f"no GPU here supports MIG ({names}): use type: gpu to serve on whole GPUs"


def _mig_binding(gpu: GpuInfo, mig: MigSlice) -> GpuBinding:
    return GpuBinding(
        kind="mig",
        device_uuid=mig.uuid,
        gpu_index=gpu.index,
        gpu_uuid=gpu.uuid,
        gpu_name=gpu.name,
        profile=mig.profile,
        memory_mb=mig.memory_mb,
        sm_count=mig.sm_count,
        gpu_instance_id=mig.gpu_instance_id,
        compute_instance_id=mig.compute_instance_id,
    )


def _whole_sms(gpu: GpuInfo) -> int:
    # The largest MIG profile spans every SM; GPUs without MIG report none, so they get a typical count.
    return max((p.sm_count for p in gpu.profiles), default=WHOLE_GPU_DEFAULT_SMS)


def _whole_binding(taken: list[GpuInfo]) -> GpuBinding:
    """One or more whole GPUs of one machine as one binding: memory and SMs summed, the first GPU named."""
    first = taken[0]
    return GpuBinding(
        kind="gpu",
        device_uuid=first.uuid,
        gpu_index=first.index,
        gpu_uuid=first.uuid,
        gpu_name=first.name,
        profile="gpu",
        memory_mb=sum(g.memory_mb for g in taken),
        sm_count=sum(_whole_sms(g) for g in taken),
        device_uuids=tuple(g.uuid for g in taken),
        gpu_indices=tuple(g.index for g in taken),
    )


def _too_few_whole(where: str, wanted: int, free: int, without_mig: int, total: int) -> str:
    if wanted == 1:
        return f"{where}: no whole GPU without MIG is left ({total} GPU(s), MIG on the others)"
    return (
        f"{where}: gpus: {wanted} needs {wanted} whole GPUs without MIG on one machine, but {without_mig} of the "
        f"{total} GPU(s) here are without MIG and {free} of them are free: lower gpus, or turn MIG off on more GPUs"
    )


def _memory_problem(
    model: ModelConfig,
    footprint: ModelFootprint | None,
    instance: PlannedInstance,
    binding: GpuBinding,
    where: str,
    dtype_bytes: int,
    needed_mb: int | None,
) -> str | None:
    """Why the instance does not fit its slice or GPUs, or None. With the model's shape known, the estimate counts
    weights, the CUDA context and the activations of the largest batch the instance may form (gpu-audit B3);
    without it, the weights plus a round headroom."""
    if footprint is not None and footprint.shape is not None:
        max_input_tokens = model.max_input_tokens or footprint.max_input_tokens
        problem = fit_problem(
            footprint.shape,
            "float32" if dtype_bytes == 4 else "float16",
            instance.max_batch_tokens,
            instance.max_concurrency,
            max_input_tokens,
            binding.memory_mb,
            _describe_binding(binding),
            parameters=footprint.parameters or None,  # a folder without weight files: counted from the shape
        )
        return None if problem is None else f"{where}: {problem}"
    if needed_mb is not None and needed_mb > binding.memory_mb:
        return _too_small(where, needed_mb, dtype_bytes, binding)
    return None


def _fits(
    model: ModelConfig,
    footprint: ModelFootprint | None,
    where: str,
    dtype_bytes: int,
    needed_mb: int | None,
    instance: PlannedInstance,
    binding: GpuBinding,
) -> str | None:
    return _memory_problem(model, footprint, instance, binding, where, dtype_bytes, needed_mb)


def _describe_binding(binding: GpuBinding) -> str:
    if binding.kind == "mig":
        return f"{binding.profile} on GPU {binding.gpu_index}"
    return f"whole GPU(s) {', '.join(str(i) for i in binding.gpu_indices)} together"


def _too_small(where: str, needed_mb: int, dtype_bytes: int, binding: GpuBinding) -> str:
    wanted = f"the model needs about {needed_mb} MiB ({dtype_bytes * 8}-bit weights plus headroom)"
    if binding.kind == "mig":
        return (
            f"{where}: {wanted} but {binding.profile} on GPU {binding.gpu_index} has {binding.memory_mb} MiB: "
            "choose a bigger profile"
        )
    indices = ", ".join(str(i) for i in binding.gpu_indices)
    return (
        f"{where}: {wanted} but whole GPU(s) {indices} have {binding.memory_mb} MiB together: raise gpus to span "
        "more whole GPUs"
    )


def plan_gpu_instances(
    config: Config, topology: Topology, instances: list[InstanceConfig], footprint: Footprints
) -> tuple[list[PlannedInstance], list[str]]:
    """Bind each instance to a free MIG slice of its profile, or (``type: gpu``) to ``gpus`` whole GPUs without MIG
    (the first free ones, in index order).

    A slice with processes or memory in use (``MigSlice.busy_reason``) is not free: it is skipped with a note naming
    it (gpu-audit W2). Returns the planned instances (ranks from 0, in config order) and notes (busy and unused slices,
    unused GPUs). Raises
    PlanError with one line per problem: unknown profile, no free slice (with the free ones and the command that
    creates one), MIG disabled or waiting for a reset, a model bigger than its slice (or than the sum of its whole
    GPUs' memory), too few whole GPUs (saying how many exist and are free). ``type: auto`` takes the smallest free
    slice (by memory, then SMs) whose memory fits its model's estimate, else a whole GPU without MIG.
    """
    gpus = topology.gpus
    free: dict[int, list[MigSlice]] = {
        g.index: [s for s in g.slices if s.busy_reason is None]
        for g in gpus
        if g.mig_enabled and not g.mig_reset_pending
    }
    busy_notes = [
        f"MIG slice {s.profile} {s.uuid} on GPU {g.index} skipped: {s.busy_reason}"
        for g in gpus
        if g.index in free
        for s in g.slices
        if s.busy_reason is not None
    ]
    whole = [g for g in gpus if not g.mig_enabled and not g.mig_pending_enabled]
    without_mig = len(whole)
    by_index = {g.index: g for g in gpus}
    problems: list[str] = []
    planned: list[PlannedInstance] = []
    state_problem = _mig_state_problem(gpus)

    for instance in instances:
        where = f"instance {instance.name!r}"
        model = config.model_for(instance)
        model_footprint = footprint_for(footprint, config, model)
        dtype_bytes = _RUNTIME_DTYPE_BYTES.get(model.dtype, 2)
        needed_mb = model_footprint.gpu_memory_mb(dtype_bytes) if model_footprint is not None else None

        fits = functools.partial(_fits, model, model_footprint, where, dtype_bytes, needed_mb)

        if instance.type == "auto":
            picked = _auto_slice(config, instance, free, by_index, whole, fits, len(planned))
            if isinstance(picked, str):
                problems.append(f"{where}: type auto: {picked}")
                continue
            if picked.gpu is not None and picked.gpu.kind == "gpu":
                whole = [g for g in whole if g.uuid != picked.gpu.gpu_uuid]
            planned.append(picked)
            continue
        if instance.type == "gpu":
            if len(whole) < instance.gpus:
                problems.append(_too_few_whole(where, instance.gpus, len(whole), without_mig, len(gpus)))
                continue
            # Capacities add up: the layers run one GPU after another, so the sum is reached only when batches
            # overlap (max_concurrency > 1: one batch on the last GPU while the next starts on the first).
            taken, whole = whole[: instance.gpus], whole[instance.gpus :]
            binding = _whole_binding(taken)
            capacity = sum(capacity_for_sms(_whole_sms(g)) for g in taken)
        else:
            # A profile is known from the GPU's table or, when NVML refused the table (W5), from existing slices.
            knowing = [
                g
                for g in gpus
                if g.profile(instance.type) is not None or any(s.profile == instance.type for s in g.slices)
            ]
            unread = [g for g in gpus if g.mig_supported and not g.profiles]
            if not knowing and state_problem is not None and unread:
                # MIG off or pending and no table for this board: the profile cannot be checked before enabling (B2).
                problems.append(
                    f"{where}: {state_problem} (GPU {unread[0].index}'s profile table is unknown until MIG is on)"
                )
                continue
            if not knowing:
                tables = "; ".join(
                    f"GPU {g.index} ({g.name}): {', '.join(p.name for p in g.profiles) or 'no MIG profiles'}"
                    for g in gpus
                )
                problems.append(f"{where}: profile {instance.type!r} does not exist on these GPUs ({tables})")
                continue
            if state_problem is not None:
                problems.append(f"{where}: {state_problem}")
                continue
            match = next(
                ((index, s) for index, slices in free.items() for s in slices if s.profile == instance.type), None
            )
            if match is None:
                target = next((g for g in knowing if g.index in free), knowing[0])
                profile = target.profile(instance.type)
                create = (
                    f"create one with sudo nvidia-smi mig -i {target.index} -cgi {profile.profile_id} -C, or see "
                    "orchestrator mig plan"
                    if profile is not None
                    else "see orchestrator mig plan"
                )
                busy = f"; {'; '.join(busy_notes)}" if busy_notes else ""
                problems.append(
                    f"{where}: no free {instance.type} slice (free slices: {_describe_free(free)}{busy}); {create}"
                )
                continue
            gpu_index, mig = match
            free[gpu_index].remove(mig)
            binding = _mig_binding(by_index[gpu_index], mig)
            capacity = capacity_for_sms(binding.sm_count)
        candidate = planned_instance(
            config,
            instance,
            len(planned),
            device=binding.kind,
            cpu_cores=(),
            threads=1,
            capacity=capacity,
            gpu=binding,
        )
        too_small = fits(candidate, binding)
        if too_small is not None:
            problems.append(too_small)
            continue
        planned.append(candidate)

    if problems:
        raise PlanError("\n".join(problems))
    notes = busy_notes + [
        f"unused MIG slice on GPU {index}: {s.profile} {s.uuid} (GPU instance {s.gpu_instance_id})"
        for index, slices in free.items()
        for s in slices
    ]
    notes += [f"unused whole GPU {g.index} ({g.name}): add an instance with type: gpu to serve on it" for g in whole]
    return planned, notes


def _auto_slice(
    config: Config,
    instance: InstanceConfig,
    free: dict[int, list[MigSlice]],
    by_index: dict[int, GpuInfo],
    whole: list[GpuInfo],
    fits: Callable[[PlannedInstance, GpuBinding], str | None],
    rank: int,
) -> PlannedInstance | str:
    """The instance on the smallest free MIG slice its model fits (taken out of ``free``), else on the first free
    whole GPU without MIG; or why none will do."""
    candidates = sorted(
        ((index, s) for index, slices in free.items() for s in slices),
        key=lambda pair: (pair[1].memory_mb, pair[1].sm_count),
    )
    tried: list[str] = []
    for gpu_index, mig in candidates:
        binding = _mig_binding(by_index[gpu_index], mig)
        candidate = planned_instance(
            config,
            instance,
            rank,
            device="mig",
            cpu_cores=(),
            threads=1,
            capacity=capacity_for_sms(mig.sm_count),
            gpu=binding,
        )
        if fits(candidate, binding) is None:
            free[gpu_index].remove(mig)
            return candidate
        tried.append(f"{mig.profile} on GPU {gpu_index}")
    for gpu in whole:
        binding = _whole_binding([gpu])
        candidate = planned_instance(
            config,
            instance,
            rank,
            device="gpu",
            cpu_cores=(),
            threads=1,
            capacity=capacity_for_sms(_whole_sms(gpu)),
            gpu=binding,
        )
        problem = fits(candidate, binding)
        if problem is None:
            return candidate
        tried.append(f"whole GPU {gpu.index}")
    if not tried:
        return "no free MIG slice or whole GPU is left (create slices with orchestrator mig plan, or name a profile)"
    return (
        f"the model fits none of the free devices ({', '.join(tried)}): create a bigger slice, or lower "
        "batching.max_batch_tokens"
    )


def estimated_memory_mib(config: Config, instance: PlannedInstance, footprint: ModelFootprint | None) -> float | None:
    """The memory the instance's model is estimated to need on its device (None without the model's shape)."""
    if footprint is None or footprint.shape is None:
        return None
    model = next((m for m in config.served_models() if (m.name or "") == instance.model), config.model)
    dtype_bytes = 4 if model.dtype == "float32" else 2
    max_input_tokens = model.max_input_tokens or footprint.max_input_tokens
    return estimate_memory(
        footprint.shape,
        dtype_bytes,
        instance.max_batch_tokens,
        instance.max_concurrency,
        max_input_tokens,
        footprint.parameters or None,
    ).total_mib
