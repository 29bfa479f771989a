"""Pure MIG layout planning: which GPU instances to create so that every configured instance gets a slice.

``plan_layout`` assigns the configured profiles to MIG-capable GPUs (GPU by GPU, largest profiles first), checks each
against the profile's own placements and the GPU's memory slices, and returns the ``nvidia-smi`` commands that
create the layout, or explains why it cannot fit. Nothing is run here: ``orchestrator mig plan --apply`` runs them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from orchestrator.config import Config
from orchestrator.contracts.errors import PlanError
from orchestrator.hardware.topology import GpuInfo, MigProfile, Topology


@dataclass(frozen=True)
class GpuLayout:
    """What one GPU should hold and the commands that make it so (empty when it already matches)."""

    gpu: GpuInfo
    profiles: tuple[MigProfile, ...]
    commands: tuple[str, ...]
    destroys: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class LayoutPlan:
    gpus: tuple[GpuLayout, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def commands(self) -> list[str]:
        return [command for layout in self.gpus for command in layout.commands]


def _largest_first(profiles: list[MigProfile]) -> list[MigProfile]:
    return sorted(profiles, key=lambda p: (-p.placement_size, -p.compute_slices))


def greedy_placements(profiles: list[MigProfile], memory_slices: int) -> list[int] | None:
    """Starts chosen when creating in the given order, each at its lowest free allowed start (None if stuck)."""
    used = [False] * memory_slices
    starts = []
    for profile in profiles:
        for start in profile.placements:
            span = range(start, start + profile.placement_size)
            if span.stop <= memory_slices and not any(used[s] for s in span):
                for s in span:
                    used[s] = True
                starts.append(start)
                break
        else:
            return None
    return starts


def fit_placements(profiles: list[MigProfile], memory_slices: int) -> list[int] | None:
    """A start slice for each of ``profiles`` (largest first) so that none overlap, or None if none exists.

    Exhaustive over each profile's allowed starts (a GPU holds at most 7 instances, so this is tiny), and checks
    each profile's per-GPU instance limit.
    """
    ordered = _largest_first(profiles)
    if any(sum(q.profile_id == p.profile_id for q in ordered) > p.max_instances for p in ordered):
        return None
    used = [False] * memory_slices
    starts: list[int] = []

    def place(position: int) -> bool:
        if position == len(ordered):
            return True
        profile = ordered[position]
        for start in profile.placements:
            span = range(start, start + profile.placement_size)
            if span.stop > memory_slices or any(used[s] for s in span):
                continue
            for s in span:
                used[s] = True
            starts.append(start)
            if place(position + 1):
                return True
            starts.pop()
            for s in span:
                used[s] = False
        return False

    return starts if place(0) else None


def creation_order(profiles: list[MigProfile], memory_slices: int) -> tuple[list[MigProfile], str | None]:
    """The order to pass to ``nvidia-smi mig -cgi``: largest first, as NVIDIA recommends, unless creating largest
    first at the lowest free starts would strand a later instance; then the order of a layout that fits, by
    start, with a note saying so."""
    largest = _largest_first(profiles)
    if greedy_placements(largest, memory_slices) is not None:
        return largest, None
    starts = fit_placements(profiles, memory_slices)
    assert starts is not None, "creation_order needs a layout that fits"
    by_start = [p for _, p in sorted(zip(starts, largest, strict=True), key=lambda pair: pair[0])]
    return by_start, "created in memory-slice order: largest first would leave a later instance without a start"


def _gpu_commands(gpu: GpuInfo, profiles: list[MigProfile]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(commands, descriptions of what is destroyed, notes) to turn the GPU into ``profiles``."""
    wanted = Counter(p.name for p in profiles)
    existing = Counter(s.profile for s in gpu.slices)
    if gpu.mig_enabled and not gpu.mig_reset_pending and wanted == existing:
        return (), (), (f"GPU {gpu.index} already has this layout: nothing to do",)
    commands: list[str] = []
    notes: list[str] = []
    if not gpu.mig_enabled or gpu.mig_reset_pending:
        commands.append(f"nvidia-smi -i {gpu.index} -mig 1")
        if "A100" in gpu.name or "A30" in gpu.name:
            commands.append(f"nvidia-smi -r -i {gpu.index}")  # Ampere applies the mode at a GPU reset
    destroys = tuple(f"{s.profile} {s.uuid} (GPU instance {s.gpu_instance_id})" for s in gpu.slices)
    if gpu.slices:
        commands.append(f"nvidia-smi mig -i {gpu.index} -dci")
        commands.append(f"nvidia-smi mig -i {gpu.index} -dgi")
    ordered, order_note = creation_order(profiles, gpu.memory_slice_count)
    if order_note:
        notes.append(order_note)
    commands.append(f"nvidia-smi mig -i {gpu.index} -cgi {','.join(str(p.profile_id) for p in ordered)} -C")
    if gpu.process_pids:
        notes.append(f"GPU {gpu.index} is used by process(es) {', '.join(map(str, gpu.process_pids))}: stop them first")
    return tuple(commands), destroys, tuple(notes)


def plan_layout(config: Config, topology: Topology) -> LayoutPlan:
    """The GPU-instance layout that gives every MIG-typed instance of the config its slice.

    Raises PlanError (one line per problem) for a profile that no GPU knows, or a set of profiles that does not fit
    the MIG-capable GPUs, saying why (memory slices, placements, per-GPU limits).
    """
    capable = [g for g in topology.gpus if g.mig_supported]
    if not capable:
        names = ", ".join(sorted({g.name for g in topology.gpus})) or "no GPU found"
        raise PlanError(f"no MIG-capable GPU here ({names}): nothing to partition")
    requested = [i for i in config.mig_instances if i.type not in ("cpu", "gpu")]
    if not requested:
        raise PlanError("the config asks for no MIG slice (every instance is type: cpu or gpu)")
    problems = [
        f"instance {i.name!r}: profile {i.type!r} exists on no MIG-capable GPU here "
        f"(GPU {capable[0].index} has: {', '.join(p.name for p in capable[0].profiles)})"
        for i in requested
        if not any(g.profile(i.type) for g in capable)
    ]
    if problems:
        raise PlanError("\n".join(problems))

    def span(profile_name: str) -> int:
        return max(p.placement_size for g in capable if (p := g.profile(profile_name)) is not None)

    # Largest first across the whole request, each onto the first GPU where the GPU's set still fits.
    assigned: dict[int, list[MigProfile]] = {g.index: [] for g in capable}
    for instance in sorted(requested, key=lambda i: -span(i.type)):
        for gpu in capable:
            profile = gpu.profile(instance.type)
            if profile is None:
                continue
            if fit_placements(assigned[gpu.index] + [profile], gpu.memory_slice_count) is not None:
                assigned[gpu.index].append(profile)
                break
        else:
            summary = "; ".join(
                f"GPU {g.index} ({g.name}, {g.memory_slice_count} memory slices) holds "
                f"{', '.join(p.name for p in assigned[g.index]) or 'nothing yet'}"
                for g in capable
            )
            problems.append(
                f"instance {instance.name!r}: no room for another {instance.type} ({summary}); each profile can "
                "only start at its own placements and has a per-GPU limit: use smaller profiles or fewer instances"
            )
    if problems:
        raise PlanError("\n".join(problems))

    layouts = []
    for gpu in capable:
        profiles = assigned[gpu.index]
        if not profiles:
            continue
        commands, destroys, notes = _gpu_commands(gpu, profiles)
        layouts.append(GpuLayout(gpu=gpu, profiles=tuple(profiles), commands=commands, destroys=destroys, notes=notes))
    return LayoutPlan(gpus=tuple(layouts))
