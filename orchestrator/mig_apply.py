"""Carry out a MIG layout plan on this machine through NVML (root only): enable, reset, destroy, create, verify.

The one module that changes GPUs (the probe only reads them, the layout planner only decides).

Contract: ``apply_layout(config, layout, run=..., probe=...)`` returns an ``ApplyResult``; it raises only
``PlanError`` (from re-planning). Each GPU instance is created at the memory-slice start the plan chose
(``nvmlDeviceCreateGpuInstanceWithPlacement``), never where the driver's default order would put it (gpu-audit B4),
with one full compute instance. Every existing compute and GPU instance of a changed GPU is destroyed first,
including GPU instances without compute instances, which no MIG-device listing shows (W10). After enabling MIG the
machine is probed again and the layout re-planned from NVML's own table (the first plan's may be assumed, B2); a mode
change still pending stops here with the reason (W9). At the end the machine is probed again and compared with the
plan: ``ApplyResult.differences`` names each difference.

``run`` executes one ``nvidia-smi`` command line (only the GPU reset has no NVML call) and returns (exit code,
output); ``probe`` is ``probe_topology``. Both are seams for tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import shlex
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from orchestrator.config import Config
from orchestrator.hardware.nvml_call import INVALID_ARGUMENT, NOT_FOUND, NOT_SUPPORTED, Nvml, NvmlCallError
from orchestrator.hardware.topology import Topology
from orchestrator.planning.mig_layout import GpuLayout, LayoutPlan, compare_layout, pending_hint, plan_layout

# nvml.h NVML_COMPUTE_INSTANCE_PROFILE_<n>_SLICE: the compute-instance profile spanning a whole GPU instance.
_FULL_COMPUTE_INSTANCE = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4, 8: 5, 6: 6}


@dataclass(frozen=True)
class ApplyResult:
    """What was done (one line per step) and how the machine differs from the plan afterwards (empty: it matches)."""

    lines: tuple[str, ...]
    differences: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.differences


def run_nvidia_smi(command: str) -> tuple[int, str]:
    """Run one nvidia-smi command line; (exit code, stdout and stderr)."""
    result = subprocess.run(shlex.split(command), capture_output=True, text=True, check=False)
    return result.returncode, (result.stdout + result.stderr).strip()


@contextlib.contextmanager
def _session() -> Iterator[Nvml]:
    import pynvml

    nvml = Nvml(pynvml)
    nvml.call("nvmlInit")
    try:
        yield nvml
    finally:
        with contextlib.suppress(NvmlCallError):
            nvml.call("nvmlShutdown")


def apply_layout(
    config: Config,
    layout: LayoutPlan,
    run: Callable[[str], tuple[int, str]] = run_nvidia_smi,
    probe: Callable[[], Topology] | None = None,
) -> ApplyResult:
    """Make the machine hold ``layout`` (see the module docstring). Needs root; NVML refusals become differences."""
    if probe is None:
        from orchestrator.hardware.probe import probe_topology

        probe = probe_topology
    lines: list[str] = []
    busy = [
        f"GPU {g.gpu.index} is used by process(es) {', '.join(map(str, g.gpu.process_pids))}: stop them first; "
        "nothing was changed"
        for g in layout.gpus
        if g.changes and g.gpu.process_pids
    ]
    if busy:  # checked before destroying anything: a half-destroyed GPU is worse than an unchanged one
        return ApplyResult(tuple(lines), tuple(busy))
    try:
        if any(g.enable_mig for g in layout.gpus):
            stopped = _enable(layout, run, lines)
            if stopped:
                return ApplyResult(tuple(lines), tuple(stopped))
            topology = probe()
            pending = [g for g in topology.gpus if g.mig_supported and (g.mig_reset_pending or not g.mig_enabled)]
            wanted = {g.gpu.uuid for g in layout.gpus if g.enable_mig}
            still = [pending_hint(g) for g in pending if g.uuid in wanted]
            if still:
                return ApplyResult(tuple(lines), tuple(still))
            layout = plan_layout(config, topology)  # NVML's own table now that MIG is on
            lines.append("MIG is on: re-read NVML's profile table and re-planned")
        with _session() as nvml:
            for planned in layout.gpus:
                if planned.changes and planned.placements:
                    _rebuild(nvml, planned, lines)
    except NvmlCallError as error:
        return ApplyResult(tuple(lines), (f"NVML refused: {error} (run as root, with no process on the GPU)",))
    return ApplyResult(tuple(lines), tuple(compare_layout(layout, probe())))


def _enable(layout: LayoutPlan, run: Callable[[str], tuple[int, str]], lines: list[str]) -> list[str]:
    """Set MIG mode on (NVML) and reset GA100 GPUs (nvidia-smi); the problems that stop the apply."""
    problems = []
    with _session() as nvml:
        for planned in layout.gpus:
            if not planned.enable_mig:
                continue
            handle = nvml.call("nvmlDeviceGetHandleByUUID", planned.gpu.uuid)
            nvml.call("nvmlDeviceSetMigMode", handle, nvml.module.NVML_DEVICE_MIG_ENABLE)
            lines.append(f"GPU {planned.gpu.index}: MIG mode set to enabled")
    for planned in layout.gpus:
        if planned.reset:
            command = f"nvidia-smi -r -i {planned.gpu.index}"
            code, output = run(command)
            lines.append(f"$ {command}" + (f"\n{output}" if output else ""))
            if code != 0:
                problems.append(f"'{command}' failed (exit {code}): {pending_hint(planned.gpu)}")
    return problems


def _instances(nvml: Nvml, owner: Any, function: str, handle_type: Any, profile_ids: range) -> list[Any]:
    found = []
    for profile_id in profile_ids:
        array = (handle_type * 8)()
        count = ctypes.c_uint(8)
        try:
            nvml.call(function, owner, profile_id, array, ctypes.byref(count))
        except NvmlCallError as error:
            if error.code in (NOT_FOUND, INVALID_ARGUMENT, NOT_SUPPORTED):  # no such profile on this GPU
                continue
            raise
        found += [array[k] for k in range(count.value)]
    return found


def _rebuild(nvml: Nvml, planned: GpuLayout, lines: list[str]) -> None:
    """Destroy every compute and GPU instance of the GPU, then create the planned ones at their starts."""
    module = nvml.module
    gpu = nvml.call("nvmlDeviceGetHandleByUUID", planned.gpu.uuid)
    profile_ids = range(0, 64)
    for gi in _instances(nvml, gpu, "nvmlDeviceGetGpuInstances", module.c_nvmlGpuInstance_t, profile_ids):
        ci_profiles = range(int(module.NVML_COMPUTE_INSTANCE_PROFILE_COUNT))
        for ci in _instances(
            nvml, gi, "nvmlGpuInstanceGetComputeInstances", module.c_nvmlComputeInstance_t, ci_profiles
        ):
            nvml.call("nvmlComputeInstanceDestroy", ci)
        info = nvml.call("nvmlGpuInstanceGetInfo", gi)
        nvml.call("nvmlGpuInstanceDestroy", gi)
        lines.append(f"GPU {planned.gpu.index}: destroyed GPU instance {int(info.id)}")
    for profile, start in sorted(planned.placements, key=lambda pair: pair[1]):
        placement = module.c_nvmlGpuInstancePlacement_t(start, profile.placement_size)
        gi = nvml.call("nvmlDeviceCreateGpuInstanceWithPlacement", gpu, profile.profile_id, ctypes.byref(placement))
        nvml.call("nvmlGpuInstanceCreateComputeInstance", gi, _FULL_COMPUTE_INSTANCE[profile.compute_slices])
        lines.append(f"GPU {planned.gpu.index}: created {profile.name} at memory slice {start}")
