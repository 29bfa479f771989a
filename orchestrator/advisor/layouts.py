"""The valid MIG layouts of one GPU, from its profile table and placement rules (those ``mig plan`` uses).

A GPU is named as people name it (``"H100 80GB"``, ``"A100-80GB"``, ``"H200"``) and resolved against the built-in
table of ``orchestrator.hardware.mig_profile_table``. A layout is a multiset of profiles that
``orchestrator.planning.mig_layout.fit_placements`` can place (memory-slice starts, per-GPU limits) within the
GPU's compute slices; only *maximal* layouts are kept (no further profile fits), since a layout with room left serves
less for the same GPU. Media-extension profiles (``+me``) are left out (same compute, for video engines), and so are
profiles whose memory cannot hold the model.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from orchestrator.advisor.measurements import AdvisorError
from orchestrator.hardware.mig_profile_table import BOARDS, BoardTable
from orchestrator.hardware.topology import MigProfile
from orchestrator.planning.mig_layout import fit_placements


@dataclass(frozen=True)
class GpuLayout:
    """One GPU's slices, largest first; ``name`` reads ``3g.40gb + 2g.20gb + 1g.10gb x2``."""

    profiles: tuple[MigProfile, ...]

    @property
    def name(self) -> str:
        counts = Counter(p.name for p in self.profiles)
        return " + ".join(f"{n} x{k}" if k > 1 else n for n, k in counts.items())

    @property
    def compute_slices(self) -> int:
        return sum(p.compute_slices for p in self.profiles)


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def board_named(name: str) -> BoardTable:
    """The board table whose model name matches ``name`` (ignoring case, spaces and dashes; a unique prefix will
    do: ``H200`` is ``H200-141GB``). Raises AdvisorError listing the known boards."""
    boards = {b.model: b for b in BOARDS.values()}
    wanted = _key(name)
    exact = [b for model, b in boards.items() if any(_key(part) == wanted for part in [model, *model.split("/")])]
    matches = exact or [b for model, b in boards.items() if _key(model).startswith(wanted) and wanted]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(sorted(boards))
    how = "matches several boards" if matches else "is not a MIG board this orchestrator knows"
    raise AdvisorError(f"--gpu {name!r} {how}: one of {known}")


def usable_profiles(board: BoardTable, needed_mb: int | None = None) -> list[MigProfile]:
    """The board's profiles a layout may use: no media extensions, enough memory for the model."""
    return [p for p in board.profiles() if "+me" not in p.name and (needed_mb is None or p.memory_mb >= needed_mb)]


def gpu_layouts(board: BoardTable, needed_mb: int | None = None) -> list[GpuLayout]:
    """Every maximal layout of one GPU of ``board`` (at least one slice each), most compute first."""
    profiles = sorted(usable_profiles(board, needed_mb), key=lambda p: (-p.compute_slices, -p.memory_mb))
    found: list[list[MigProfile]] = []

    def fits(chosen: list[MigProfile]) -> bool:
        return (
            sum(p.compute_slices for p in chosen) <= board.compute_slices
            and fit_placements(chosen, board.memory_slices) is not None
        )

    def extend(chosen: list[MigProfile], start: int) -> None:
        for index in range(start, len(profiles)):
            candidate = [*chosen, profiles[index]]
            if fits(candidate):
                extend(candidate, index)
        if chosen and not any(fits([*chosen, p]) for p in profiles):
            found.append(chosen)

    extend([], 0)
    layouts = [GpuLayout(tuple(chosen)) for chosen in found]
    return sorted(layouts, key=lambda layout: (-layout.compute_slices, layout.name))
