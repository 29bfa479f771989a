"""Plain data describing the hardware the planner places instances on (no probing here).

The NVML probe (``nvml_probe.py``) fills these from the driver; tests build them by hand or from the fake NVML's
fixtures. Nothing here imports pynvml.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# A MIG slice whose memory in use (NVML v2 ``used``: allocated, without the driver's reservation) exceeds this is
# taken by someone else: a CUDA context alone takes a few hundred MiB, so a few dozen cannot be a real tenant.
BUSY_MEMORY_MB = 64


@dataclass(frozen=True)
class CpuTopology:
    """The cores this process may run on (its affinity mask, which respects container limits)."""

    cores: tuple[int, ...]


@dataclass(frozen=True)
class MigProfile:
    """A GPU-instance profile as one GPU's own table defines it (the same name differs between GPU models).

    Attributes:
        name: the profile name without NVML's ``MIG`` prefix, e.g. ``1g.10gb`` or ``1g.10gb+me``.
        profile_id: the real profile ID, what ``nvidia-smi mig -cgi`` and the create calls take (19 for 1g.5gb on
            A100-40GB), not the ``NVML_GPU_INSTANCE_PROFILE_*`` index used to query it.
        compute_slices: compute slices (the ``1`` of ``1g``).
        memory_mb: memory of one instance of this profile.
        sm_count: streaming multiprocessors of one instance.
        max_instances: how many instances of this profile fit on an empty GPU.
        placements: the memory-slice starts where an instance may be created.
        placement_size: the memory slices one instance spans.
    """

    name: str
    profile_id: int
    compute_slices: int
    memory_mb: int
    sm_count: int
    max_instances: int
    placements: tuple[int, ...]
    placement_size: int


@dataclass(frozen=True)
class MigSlice:
    """One existing MIG device (a GPU instance with its compute instance), as CUDA can be pinned to it.

    Attributes:
        uuid: ``MIG-xxxxxxxx-...``, the value for ``CUDA_VISIBLE_DEVICES``.
        profile: the profile name parsed from the MIG device name, e.g. ``1g.5gb``.
        gpu_instance_id / compute_instance_id: NVML's ids (dcgm-exporter's ``GPU_I_ID`` is the former).
        memory_mb / sm_count: the slice's own memory and SMs.
        parent_index / parent_uuid: the physical GPU.
        process_pids: processes NVML lists on this MIG device (its own handle's list; no root needed).
        used_memory_mb: memory in use on the slice (NVML v2 ``used``, reserved excluded), None when unreadable.
        shared_by: compute instances sharing this slice's GPU instance (``1c.3g.20gb`` x3: 3); ``memory_mb`` is
            already this compute instance's share of the GPU instance's memory.
    """

    uuid: str
    profile: str
    gpu_instance_id: int
    compute_instance_id: int
    memory_mb: int
    sm_count: int
    parent_index: int
    parent_uuid: str
    process_pids: tuple[int, ...] = ()
    used_memory_mb: int | None = None
    shared_by: int = 1

    @property
    def busy_reason(self) -> str | None:
        """Why another replica must not be put here (processes or memory in use), or None when it is free."""
        if self.process_pids:
            return f"used by process(es) {', '.join(map(str, self.process_pids))}"
        if self.used_memory_mb is not None and self.used_memory_mb > BUSY_MEMORY_MB:
            return f"{self.used_memory_mb} MiB of its memory in use"
        return None


@dataclass(frozen=True)
class GpuInstanceInfo:
    """A GPU instance as NVML lists it (root only): where it sits and how many compute instances it holds.

    A GPU instance without compute instances is no MIG device (CUDA cannot use it) but still holds its memory slices.
    """

    gpu_instance_id: int
    profile_id: int
    profile: str
    start: int
    size: int
    compute_instances: int


@dataclass(frozen=True)
class GpuInfo:
    """One physical GPU as NVML reports it.

    Attributes:
        mig_supported: False when the GPU cannot do MIG (``nvmlDeviceGetMigMode`` is NotSupported).
        mig_enabled: the current MIG mode.
        mig_pending_enabled: the pending MIG mode; differs from ``mig_enabled`` until the GPU is reset.
        slices: existing MIG devices (empty when MIG is off or no instance was created).
        profiles: this GPU's GPU-instance profile table (empty when MIG is unsupported).
        memory_slice_count: memory slices of the GPU (8 on A100/H100/H200, 4 on A30); 0 without MIG.
        process_pids: processes using the GPU (they block MIG changes).
        pci_device_id: NVML's ``pciDeviceId`` (``0x20B010DE``), the key of the built-in profile table.
        compute_capability: (major, minor) from NVML; (8, 0) is GA100, whose MIG mode changes need a GPU reset.
        profiles_assumed: the profile table comes from the built-in table for the PCI device id, not from NVML
            (NVML refuses it while MIG is off or pending, or to this user); it is re-read once MIG is on.
        gpu_instances: the GPU instances, with their placements, or None when NVML did not list them (not root, or
            MIG off).
    """

    index: int
    name: str
    uuid: str
    memory_mb: int
    mig_supported: bool = False
    mig_enabled: bool = False
    mig_pending_enabled: bool = False
    slices: tuple[MigSlice, ...] = ()
    profiles: tuple[MigProfile, ...] = ()
    memory_slice_count: int = 0
    process_pids: tuple[int, ...] = ()
    pci_device_id: int | None = None
    compute_capability: tuple[int, int] | None = None
    profiles_assumed: bool = False
    gpu_instances: tuple[GpuInstanceInfo, ...] | None = None

    @property
    def mig_reset_pending(self) -> bool:
        """True when a MIG mode change waits for a GPU reset."""
        return self.mig_supported and self.mig_pending_enabled != self.mig_enabled

    def profile(self, name: str) -> MigProfile | None:
        """This GPU's profile of that name, or None."""
        return next((p for p in self.profiles if p.name == name), None)


@dataclass(frozen=True)
class Topology:
    """Everything discovered on this machine.

    Attributes:
        cpu: the usable cores.
        gpus: physical GPUs found through NVML (empty when there is no driver).
        gpu_note: one line saying why no GPU is used (no driver, no device...), or None when GPUs were found.
        driver_version: the NVIDIA driver version string, when NVML answered.
        cuda_driver_version: the CUDA version the driver supports (e.g. 12040), when NVML answered.
        warnings: problems found while probing that did not stop it (a lost GPU skipped...).
        gpu_error: set when an NVIDIA driver is installed but NVML failed (not loaded, version mismatch...): the
            reason and the fix. A config that asks for GPUs must stop with it rather than serve on CPU pools.
    """

    cpu: CpuTopology
    gpus: tuple[GpuInfo, ...] = field(default_factory=tuple)
    gpu_note: str | None = None
    driver_version: str | None = None
    cuda_driver_version: int | None = None
    warnings: tuple[str, ...] = ()
    gpu_error: str | None = None
