"""A built-in MIG profile table per board, keyed by PCI device id, for when NVML will not give one.

NVML answers the GPU-instance profile query only while MIG is enabled with no mode change pending (R535; gpu-audit
B2), not at all on R470 without its ``V`` variant's names (W5), and not to every container (NoPermission). A plan
still has to say "enable MIG, reset, create these": the profiles then come from here, and every user of them says
they are *assumed* until NVML is read again after enabling. The table also corrects what NVML is known to misreport
(the A30's ``instanceCount``, gpu-audit W11; mig-parted hardcodes the A30 for the same reason).

Sources: shared/reference/mig-nvml.md section 2 and anchors.md (NVIDIA MIG user guide; mig-parted
``config-default.yaml`` for the PCI device ids). Rows marked ``verified=False`` take memory from the profile's name
(decimal GB) and SMs from the 1g profile times the compute slices: close enough to plan a layout, re-read from NVML
once MIG is on. Placements come from the standard geometry (``mig_geometry``).
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.hardware.mig_geometry import standard_placements
from orchestrator.hardware.topology import MigProfile

_NVIDIA_VENDOR = 0x10DE
_MIB_PER_GB = 1e9 / 2**20  # a profile name's "gb" is decimal


@dataclass(frozen=True)
class BoardTable:
    """The MIG profile table of one board family.

    Attributes:
        model: a short board name for messages (``A100-SXM4-40GB``).
        architecture: ``Ampere`` (GA100: a MIG mode change needs a GPU reset), ``Hopper`` or ``Blackwell``.
        compute_slices / memory_slices: 7/8 on A100, H100, H200, B200; 4/4 on A30.
        rows: (name, profile id, NVML profile index, compute slices, memory MiB, SMs, max per GPU).
        verified: False where memory and SMs are estimates (see the module docstring).
    """

    model: str
    architecture: str
    compute_slices: int
    memory_slices: int
    rows: tuple[tuple[str, int, int, int, int, int, int], ...]
    verified: bool = True

    def profiles(self) -> tuple[MigProfile, ...]:
        """The rows as MigProfiles, with the standard placements."""
        full_mb = max(row[4] for row in self.rows)
        return tuple(
            standard_placements(
                MigProfile(name, pid, slices, memory_mb, sms, max_instances, (), 0),
                self.compute_slices,
                self.memory_slices,
                full_mb,
            )
            for name, pid, _, slices, memory_mb, sms, max_instances in self.rows
        )

    def name_of(self, profile_id: int) -> str | None:
        return next((row[0] for row in self.rows if row[1] == profile_id), None)

    def max_of(self, profile_id: int) -> int | None:
        return next((row[6] for row in self.rows if row[1] == profile_id), None)


def _gib(value: float) -> int:
    return round(value * 1024)


def _seven_slice(
    model: str,
    arch: str,
    sizes: tuple[str, str, str, str, str],
    memory: tuple[int, int, int, int],
    sms: tuple[int, int, int, int, int, int],
    verified: bool = True,
) -> BoardTable:
    """A board with the A100/H100 geometry: names of 1g, 1g double memory, 3g, 7g memory sizes."""
    one, one_double, three, seven, me = sizes
    one_mb, double_mb, three_mb, seven_mb = memory
    sm1, sm1d, sm2, sm3, sm4, sm7 = sms
    return BoardTable(
        model,
        arch,
        7,
        8,
        (
            (f"1g.{one}", 19, 0, 1, one_mb, sm1, 7),
            (f"1g.{me}+me", 20, 7, 1, one_mb, sm1, 1),
            (f"1g.{one_double}", 15, 9, 1, double_mb, sm1d, 4),
            (f"2g.{one_double}", 14, 1, 2, double_mb, sm2, 3),
            (f"3g.{three}", 9, 2, 3, three_mb, sm3, 2),
            (f"4g.{three}", 5, 3, 4, three_mb, sm4, 1),
            (f"7g.{seven}", 0, 4, 7, seven_mb, sm7, 1),
        ),
        verified,
    )


def _estimated(model: str, arch: str, names: tuple[str, str, str, str], sm1: int, sm1d: int, sm2: int) -> BoardTable:
    """A 7-slice board known by its profile names only (memory from the names, SMs scaled from the small ones)."""
    one, double, three, seven = names
    memory = tuple(round(float(n.removesuffix("gb")) * _MIB_PER_GB) for n in (one, double, three, seven))
    sms = (sm1, sm1d, sm2, sm2 // 2 * 3, sm2 * 2, sm2 // 2 * 7)
    return _seven_slice(model, arch, (one, double, three, seven, one), memory, sms, verified=False)  # type: ignore[arg-type]


_A100_40 = _seven_slice(
    "A100-40GB", "Ampere", ("5gb", "10gb", "20gb", "40gb", "5gb"), (4864, 9856, 19968, 40192), (14, 14, 28, 42, 56, 98)
)
_A100_80 = _seven_slice(
    "A100-80GB",
    "Ampere",
    ("10gb", "20gb", "40gb", "80gb", "10gb"),
    (9984, 19968, 40192, 81152),
    (14, 14, 28, 42, 56, 98),
)
_H100_80 = _seven_slice(
    "H100-80GB",
    "Hopper",
    ("10gb", "20gb", "40gb", "80gb", "10gb"),
    (9984, 20096, 40448, 81152),
    (16, 26, 32, 60, 64, 132),
)
_H100_94 = _seven_slice(
    "H100-NVL-94GB",
    "Hopper",
    ("12gb", "24gb", "47gb", "94gb", "12gb"),
    (_gib(10.75), _gib(21.62), _gib(46.38), _gib(93.12)),
    (16, 26, 32, 60, 64, 132),
)
_H200 = _seven_slice(
    "H200-141GB",
    "Hopper",
    ("18gb", "35gb", "71gb", "141gb", "18gb"),
    (16384, 33024, 71168, 143104),
    (16, 26, 32, 60, 64, 132),
)
_H100_96 = _estimated("H100-96GB/GH200-96GB", "Hopper", ("12gb", "24gb", "48gb", "96gb"), 16, 26, 32)
_GH200_144 = _estimated("GH200-144GB", "Hopper", ("18gb", "36gb", "72gb", "144gb"), 16, 26, 32)
_B200 = _estimated("B200-180GB", "Blackwell", ("23gb", "45gb", "90gb", "180gb"), 18, 30, 36)
_GB200 = _estimated("GB200-186GB", "Blackwell", ("23gb", "47gb", "93gb", "186gb"), 18, 30, 36)
_A30 = BoardTable(
    "A30-24GB",
    "Ampere",
    4,
    4,
    (
        ("1g.6gb", 14, 0, 1, 5952, 14, 4),
        ("1g.6gb+me", 21, 7, 1, 5952, 14, 1),
        ("2g.12gb", 5, 1, 2, 11968, 28, 2),
        ("2g.12gb+me", 6, 8, 2, 11968, 28, 1),
        ("4g.24gb", 0, 3, 4, 24000, 56, 1),
    ),
)

# PCI device id (the upper 16 bits of nvmlPciInfo_t.pciDeviceId) -> table; ids from mig-parted config-default.yaml.
BOARDS: dict[int, BoardTable] = {
    **dict.fromkeys((0x20B0, 0x20B1, 0x20F1, 0x20F6), _A100_40),  # A100/A800 40GB
    **dict.fromkeys((0x20B2, 0x20B5, 0x20F3, 0x20F5), _A100_80),  # A100/A800 80GB
    0x20B7: _A30,
    **dict.fromkeys((0x2330, 0x2331, 0x2322, 0x2324), _H100_80),  # H100/H800 80GB
    **dict.fromkeys((0x2321, 0x233A), _H100_94),  # H100 NVL, H800 NVL
    **dict.fromkeys((0x2342, 0x233D, 0x2329), _H100_96),  # H100-96GB, GH200 96GB, H20
    **dict.fromkeys((0x2335, 0x233B), _H200),  # H200, H200 NVL
    0x2348: _GH200_144,
    0x2901: _B200,
    0x2941: _GB200,
}


def board_for(pci_device_id: int | None) -> BoardTable | None:
    """The table for a PCI device id, given as NVML's 32-bit ``pciDeviceId`` (``0x20B010DE``) or the 16-bit id."""
    if pci_device_id is None:
        return None
    device = (
        pci_device_id >> 16 if pci_device_id > 0xFFFF and pci_device_id & 0xFFFF == _NVIDIA_VENDOR else pci_device_id
    )
    return BOARDS.get(device)
