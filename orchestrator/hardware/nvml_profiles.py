"""A GPU's GPU-instance profile table and placements, from NVML or, where NVML will not say, the built-in table.

Contract: ``read_profiles`` returns ``ProfileTable`` and raises ``NvmlCallError`` only for a lost GPU. Real drivers
refuse the profile query in several ways, each handled here (gpu-audit B2, W5, W11):
- NotSupported at every index while MIG is off or a mode change is pending (R535): the built-in table for the PCI
  device id is used, marked assumed;
- FunctionNotFound for ``nvmlDeviceGetGpuInstanceProfileInfoV`` (R470): the v1 call, whose struct has no name, is
  used; names come from the built-in table by profile id, or are built from slices and memory;
- NoPermission (containers): the built-in table, assumed, with a warning;
- a wrong ``instanceCount`` (A30): clamped to the built-in table's and to the number of placements.
Placements need root: when refused, profiles come without them (``mig_geometry`` fills the standard ones).
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from typing import Any

from orchestrator.hardware.mig_profile_table import BoardTable
from orchestrator.hardware.nvml_call import (
    FUNCTION_NOT_FOUND,
    GPU_IS_LOST,
    INVALID_ARGUMENT,
    NOT_SUPPORTED,
    Nvml,
    NvmlCallError,
)
from orchestrator.hardware.topology import MigProfile

_MAX_PROFILE_INDEX = 64  # a bound on the forward-compatible profile enumeration
_ME_INDICES = (7, 8)  # NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1 / 2_SLICE_REV1: the "+me" variants


@dataclass(frozen=True)
class ProfileTable:
    """What ``read_profiles`` found: the profiles (NVML index order), the memory-slice count (largest placement
    end; 0 when placements are unknown) and whether the profiles are assumed from the built-in table."""

    profiles: tuple[MigProfile, ...]
    memory_slice_count: int
    assumed: bool = False


def read_profiles(nvml: Nvml, handle: Any, where: str, board: BoardTable | None, settled: bool) -> ProfileTable:
    """This GPU's profile table. ``settled``: MIG is on with no change pending (else NVML may refuse, R535)."""
    version = 2
    profiles: dict[int, MigProfile] = {}
    memory_slices = 0
    placements_refused = False
    refused: NvmlCallError | None = None
    known_indices = int(nvml.module.NVML_GPU_INSTANCE_PROFILE_COUNT)
    index = 0
    while index < _MAX_PROFILE_INDEX:
        try:
            info = nvml.call("nvmlDeviceGetGpuInstanceProfileInfo", handle, index, version)
        except NvmlCallError as error:
            if error.code == GPU_IS_LOST:
                raise
            if error.code == FUNCTION_NOT_FOUND and version == 2:
                version = 1  # R470: no V variant; the v1 call has the same fields but no name
                continue
            if error.code == INVALID_ARGUMENT and index >= known_indices:
                break  # nvml.h: enumerate from 0 until InvalidArgument (newer drivers may know more than pynvml)
            if error.code in (NOT_SUPPORTED, INVALID_ARGUMENT):
                index += 1
                continue  # no profile at that index (or, with MIG off or pending, none at all)
            refused = error
            break  # NoPermission...: every other index would fail the same way
        index += 1
        placements: list[tuple[int, int]] = []
        if not placements_refused:
            try:
                placements = _placements(nvml, handle, int(info.id))
            except NvmlCallError as error:
                if error.code == GPU_IS_LOST:
                    raise
                if error.code != NOT_SUPPORTED:
                    placements_refused = True
                    nvml.warnings.append(f"{where} MIG placements unavailable: {error}")
        memory_slices = max([memory_slices, *(start + size for start, size in placements)])
        profile = _profile(info, index - 1, placements, board)
        profiles[profile.profile_id] = profile
    if profiles:
        return ProfileTable(tuple(profiles.values()), memory_slices)
    if refused is not None:
        source = f"; using the built-in table for {board.model}" if board is not None else ""
        nvml.warnings.append(f"{where} MIG profiles unavailable: {refused}{source}")
    elif settled:
        return ProfileTable((), memory_slices)  # MIG on and NVML lists nothing: nothing to assume
    if board is None:
        return ProfileTable((), 0)
    return ProfileTable(board.profiles(), board.memory_slices, assumed=True)


def _profile(info: Any, index: int, placements: list[tuple[int, int]], board: BoardTable | None) -> MigProfile:
    profile_id, slices, memory_mb = int(info.id), int(info.sliceCount), int(info.memorySizeMB)
    raw_name = getattr(info, "name", None)  # the v1 struct has no name
    if raw_name:
        name = (raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)).removeprefix("MIG ")
    else:
        name = (board.name_of(profile_id) if board else None) or _built_name(slices, memory_mb, index)
    max_instances = int(info.instanceCount)
    if placements:
        max_instances = min(max_instances, len(placements))
    table_max = board.max_of(profile_id) if board is not None else None
    if table_max is not None:
        max_instances = min(max_instances, table_max)  # the A30 reports more than fit (mig-parted hardcodes it)
    return MigProfile(
        name=name,
        profile_id=profile_id,
        compute_slices=slices,
        memory_mb=memory_mb,
        sm_count=int(info.multiprocessorCount),
        max_instances=max_instances,
        placements=tuple(start for start, _ in placements),
        placement_size=placements[0][1] if placements else 0,
    )


def _built_name(slices: int, memory_mb: int, index: int) -> str:
    """``<G>g.<GB>gb``, the way NVIDIA names profiles, for a v1 answer on a board the table does not know."""
    name = f"{slices}g.{math.ceil(memory_mb / 1024)}gb"
    return name + "+me" if index in _ME_INDICES else name


def _placements(nvml: Nvml, handle: Any, profile_id: int) -> list[tuple[int, int]]:
    """(start, size) memory-slice placements of a profile, sorted. Raises ``NvmlCallError``."""
    count = ctypes.c_uint(0)
    # First with a NULL array: NVML only reports how many placements there are.
    nvml.call("nvmlDeviceGetGpuInstancePossiblePlacements", handle, profile_id, None, ctypes.byref(count))
    if count.value == 0:
        return []
    array = (nvml.module.c_nvmlGpuInstancePlacement_t * count.value)()
    nvml.call("nvmlDeviceGetGpuInstancePossiblePlacements", handle, profile_id, array, ctypes.byref(count))
    return sorted((int(array[k].start), int(array[k].size)) for k in range(count.value))
