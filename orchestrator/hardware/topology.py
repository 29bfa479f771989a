"""Plain data describing the hardware the planner places instances on (no probing here)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CpuTopology:
    """The cores this process may run on (its affinity mask, which respects container limits)."""

    cores: tuple[int, ...]


@dataclass(frozen=True)
class GpuInfo:
    """One physical GPU as NVML reports it."""

    index: int
    name: str
    uuid: str
    memory_mb: int


@dataclass(frozen=True)
class Topology:
    """Everything discovered on this machine.

    Attributes:
        cpu: the usable cores.
        gpus: physical GPUs found through NVML (empty when there is no driver).
        gpu_note: one line saying why no GPU is used (no driver, no device...), or None when GPUs were found.
    """

    cpu: CpuTopology
    gpus: tuple[GpuInfo, ...] = field(default_factory=tuple)
    gpu_note: str | None = None
