"""Pure MIG layout planning: which GPU instances to create, and where, so that every configured instance gets a slice.

``plan_layout`` assigns the configured profiles to MIG-capable GPUs (GPU by GPU, largest profiles first), chooses a
memory-slice start for each (``GpuLayout.placements``), and returns the ``nvidia-smi`` commands a person would run,
or explains why it cannot fit. Real drivers do not place ``-cgi`` instances at the lowest free start (they fill the
upper half first, gpu-audit B4), so ``mig_apply.apply_layout`` creates each GPU instance at its planned start through
NVML instead of running the ``-cgi`` line. With MIG off the profiles may be assumed from the built-in table
(``GpuInfo.profiles_assumed``); the plan says so, and applying re-reads NVML once MIG is on. Nothing is run here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from orchestrator.config import Config
from orchestrator.contracts.errors import PlanError
from orchestrator.hardware.mig_profile_table import board_for
from orchestrator.hardware.topology import GpuInfo, MigProfile, Topology
from orchestrator.planning.planner import broken_driver_problem


@dataclass(frozen=True)
class GpuLayout:
    """What one GPU should hold and the commands that make it so (empty when it already matches)."""

    gpu: GpuInfo
    profiles: tuple[MigProfile, ...]
    commands: tuple[str, ...]
    destroys: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    placements: tuple[tuple[MigProfile, int], ...] = ()
    enable_mig: bool = False
    reset: bool = False

    @property
    def changes(self) -> bool:
        """True when this GPU must be changed (its layout differs, or MIG must be enabled)."""
        return bool(self.commands)


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


def needs_reset_for_mig(gpu: GpuInfo) -> bool:
    """GA100 (A100, A30, A800: compute capability 8.0) applies a MIG mode change only at a GPU reset; Hopper and
    later apply it at once (gpu-audit W9). Decided by architecture; by name only when NVML gave neither."""
    board = board_for(gpu.pci_device_id)
    if board is not None:
        return board.architecture == "Ampere"
    if gpu.compute_capability is not None:
        return gpu.compute_capability == (8, 0)
    return any(name in gpu.name for name in ("A100", "A30", "A800"))


def pending_hint(gpu: GpuInfo) -> str:
    """Why a MIG mode change can stay pending, and what to do (MIG user guide: daemons holding the GPU)."""
    reset = f"sudo nvidia-smi -r -i {gpu.index} (or reboot)" if needs_reset_for_mig(gpu) else "a reboot"
    return (
        f"GPU {gpu.index}'s MIG mode change is still pending: stop what holds the GPU (sudo systemctl stop "
        f"nvidia-dcgm nvsm; processes {', '.join(map(str, gpu.process_pids)) or 'none listed'}), then {reset}"
    )


def _gpu_commands(
    gpu: GpuInfo, profiles: list[MigProfile]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[tuple[MigProfile, int], ...]]:
    """(commands, descriptions of what is destroyed, notes, chosen placements) to turn the GPU into ``profiles``."""
    starts = fit_placements(profiles, gpu.memory_slice_count) or []
    placements = tuple(zip(_largest_first(profiles), starts, strict=True))
    wanted = Counter(p.name for p in profiles)
    existing = Counter(s.profile for s in gpu.slices)
    stray = [g for g in gpu.gpu_instances or () if g.compute_instances == 0]
    if gpu.mig_enabled and not gpu.mig_reset_pending and wanted == existing and not stray:
        return (), (), (f"GPU {gpu.index} already has this layout: nothing to do",), placements
    commands: list[str] = []
    notes: list[str] = []
    if gpu.profiles_assumed:
        board = board_for(gpu.pci_device_id)
        model = f" for {board.model}" if board is not None else ""
        notes.append(
            f"profiles assumed from the built-in table{model}: NVML lists them only once MIG is on; applying "
            "re-reads NVML after enabling and re-plans"
        )
    if not gpu.mig_enabled or gpu.mig_reset_pending:
        commands.append(f"nvidia-smi -i {gpu.index} -mig 1")
        if needs_reset_for_mig(gpu):
            commands.append(f"nvidia-smi -r -i {gpu.index}")  # GA100 applies the mode at a GPU reset
        elif gpu.mig_reset_pending:
            notes.append(pending_hint(gpu))
    destroys = tuple(f"{s.profile} {s.uuid} (GPU instance {s.gpu_instance_id})" for s in gpu.slices)
    destroys += tuple(f"{g.profile} GPU instance {g.gpu_instance_id} without compute instance" for g in stray)
    if gpu.mig_enabled:
        # Always, even when nothing is listed: GPU instances without compute instances are no MIG devices and are
        # unlisted as non-root, yet they hold memory slices (W10); nvidia-smi reports "not found" when none exist.
        commands.append(f"nvidia-smi mig -i {gpu.index} -dci")
        commands.append(f"nvidia-smi mig -i {gpu.index} -dgi")
        if gpu.gpu_instances is None:
            notes.append("GPU instances without compute instances cannot be listed without root: all are destroyed")
    ordered, order_note = creation_order(profiles, gpu.memory_slice_count)
    if order_note:
        notes.append(order_note)
    commands.append(f"nvidia-smi mig -i {gpu.index} -cgi {','.join(str(p.profile_id) for p in ordered)} -C")
    where = ", ".join(f"{p.name} at memory slice {start}" for p, start in sorted(placements, key=lambda x: x[1]))
    notes.append(f"--apply creates each GPU instance at its planned start through NVML: {where}")
    if gpu.process_pids:
        notes.append(f"GPU {gpu.index} is used by process(es) {', '.join(map(str, gpu.process_pids))}: stop them first")
    return tuple(commands), destroys, tuple(notes), placements


def plan_layout(config: Config, topology: Topology) -> LayoutPlan:
    """The GPU-instance layout that gives every MIG-typed instance of the config its slice.

    Raises PlanError (one line per problem) for a profile that no GPU knows, or a set of profiles that does not fit
    the MIG-capable GPUs, saying why (memory slices, placements, per-GPU limits).
    """
    broken = broken_driver_problem(config, topology)
    if broken is not None:
        raise PlanError(broken)
    capable = [g for g in topology.gpus if g.mig_supported]
    if not capable:
        names = ", ".join(sorted({g.name for g in topology.gpus})) or "no GPU found"
        raise PlanError(f"no MIG-capable GPU here ({names}): nothing to partition")
    # `auto` instances take whatever free slice fits when up plans: they ask the layout for no profile.
    requested = [i for i in config.mig_instances if i.type not in ("cpu", "gpu", "auto")]
    if not requested:
        raise PlanError("the config asks for no MIG slice (every instance is type: cpu or gpu)")
    unread = [g for g in capable if not g.profiles and (not g.mig_enabled or g.mig_reset_pending)]
    if unread and not any(g.profiles for g in capable):
        return _enable_first(unread)
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
        commands, destroys, notes, placements = _gpu_commands(gpu, profiles)
        enable = bool(commands) and (not gpu.mig_enabled or gpu.mig_reset_pending)
        layouts.append(
            GpuLayout(
                gpu=gpu,
                profiles=tuple(profiles),
                commands=commands,
                destroys=destroys,
                notes=notes,
                placements=placements,
                enable_mig=enable,
                reset=enable and needs_reset_for_mig(gpu),
            )
        )
    return LayoutPlan(gpus=tuple(layouts))


def _enable_first(gpus: list[GpuInfo]) -> LayoutPlan:
    """MIG is off on GPUs whose board the built-in table does not know and NVML lists no profile while MIG is off
    (B2): enable MIG first; the layout can be planned once NVML answers."""
    layouts = []
    for gpu in gpus:
        commands = [f"nvidia-smi -i {gpu.index} -mig 1"]
        reset = needs_reset_for_mig(gpu)
        if reset:
            commands.append(f"nvidia-smi -r -i {gpu.index}")
        note = (
            f"GPU {gpu.index} ({gpu.name}) lists no MIG profile while MIG is off and its board (PCI id "
            f"{gpu.pci_device_id or 0:#010x}) is not in the built-in table: enable MIG, then run orchestrator mig plan "
            "again to create the slices"
        )
        layouts.append(GpuLayout(gpu, (), tuple(commands), notes=(note,), enable_mig=True, reset=reset))
    return LayoutPlan(gpus=tuple(layouts), notes=("MIG must be enabled before the layout can be planned",))


def compare_layout(layout: LayoutPlan, topology: Topology) -> list[str]:
    """What the hardware (re-probed after ``--apply``) differs from the plan, one line each; empty when it matches.

    Compares GPU instances by profile and memory-slice start when NVML listed them (root), else MIG devices by
    profile; names GPU instances without compute instances and GPUs whose MIG mode is not on.
    """
    by_uuid = {g.uuid: g for g in topology.gpus}
    differences: list[str] = []
    for planned in layout.gpus:
        if not planned.placements:
            continue
        where = f"GPU {planned.gpu.index} ({planned.gpu.uuid})"
        gpu = by_uuid.get(planned.gpu.uuid)
        if gpu is None:
            differences.append(f"{where}: not found when probed again")
            continue
        if not gpu.mig_enabled or gpu.mig_reset_pending:
            differences.append(f"{where}: MIG is not enabled ({pending_hint(gpu)})")
            continue
        wanted = Counter((p.name, start) for p, start in planned.placements)
        if gpu.gpu_instances is not None:
            found = Counter((g.profile, g.start) for g in gpu.gpu_instances)
            differences += [
                f"{where}: planned {name} at memory slice {start}, not there" for name, start in wanted - found
            ]
            differences += [f"{where}: unplanned {name} at memory slice {start}" for name, start in found - wanted]
            differences += [
                f"{where}: GPU instance {g.gpu_instance_id} ({g.profile}) has no compute instance"
                for g in gpu.gpu_instances
                if g.compute_instances == 0
            ]
        else:
            names, found_names = Counter(p.name for p, _ in planned.placements), Counter(s.profile for s in gpu.slices)
            differences += [f"{where}: planned {n} x{k}, missing" for n, k in (names - found_names).items()]
            differences += [f"{where}: unplanned {n} x{k}" for n, k in (found_names - names).items()]
    return differences
