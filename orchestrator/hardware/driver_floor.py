"""The oldest NVIDIA driver each GPU needs for what this project does with MIG (gpu-audit W6).

Contract: ``driver_floor_problems(topology)`` returns one line per GPU whose driver is too old (what it needs, what
is installed, the fix); empty when all is well or the driver version is unknown. Pure: reads a probed Topology.

Floors (MIG user guide "Deployment considerations"; shared/reference/anchors.md): every MIG GPU needs R470.42.01,
since MIG device UUIDs are ``MIG-<uuid>`` only from R470 (before, ``MIG-GPU-<uuid>/gi/ci``, which pinning cannot
match); H100 needs 525.85.12, H200 and GH200 550.90.07, B200/GB200 570.133.20. A board the table does not know is
placed by compute capability (9.x Hopper, 10.x Blackwell).
"""

from __future__ import annotations

from orchestrator.hardware.mig_profile_table import board_for
from orchestrator.hardware.topology import GpuInfo, Topology

MIG_UUID_FLOOR = (470, 42, 1)
_BY_MODEL = {
    "H100-80GB": (525, 85, 12),
    "H100-NVL-94GB": (525, 85, 12),
    "H100-96GB/GH200-96GB": (550, 90, 7),
    "H200-141GB": (550, 90, 7),
    "GH200-144GB": (550, 90, 7),
    "B200-180GB": (570, 133, 20),
    "GB200-186GB": (570, 133, 20),
}
_BY_CAPABILITY_MAJOR = {9: (525, 85, 12), 10: (570, 133, 20)}


def _version(text: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return None


def _floor(gpu: GpuInfo) -> tuple[int, int, int] | None:
    if not gpu.mig_supported:
        return None
    board = board_for(gpu.pci_device_id)
    if board is not None and board.model in _BY_MODEL:
        return _BY_MODEL[board.model]
    if board is None and gpu.compute_capability is not None:
        return _BY_CAPABILITY_MAJOR.get(gpu.compute_capability[0], MIG_UUID_FLOOR)
    return MIG_UUID_FLOOR


def driver_floor_problems(topology: Topology) -> list[str]:
    """One line per MIG-capable GPU whose installed driver is older than it needs."""
    installed = _version(topology.driver_version) if topology.driver_version else None
    if installed is None:
        return []
    problems = []
    for gpu in topology.gpus:
        floor = _floor(gpu)
        if floor is not None and installed < floor:
            need = f"{floor[0]}.{floor[1]}.{floor[2]:02d}"  # NVIDIA writes 550.90.07, 470.42.01
            problems.append(
                f"GPU {gpu.index} ({gpu.name}) needs NVIDIA driver >= {need} for MIG; {topology.driver_version} is "
                f"installed: upgrade the driver (and reboot)"
            )
    return problems
