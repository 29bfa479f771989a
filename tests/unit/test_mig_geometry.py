"""The standard geometry reproduces the real placement tables, checked against the fake NVML's fixtures."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.hardware.mig_geometry import with_standard_placements
from orchestrator.hardware.probe import probe_topology
from tests.fake_nvml import install_fake_nvml


@pytest.mark.parametrize(
    "fixture", ["a100_40gb_7x1g5gb", "a100_80gb_mixed", "h100_80gb_mixed", "h200_mixed", "a30_4x1g6gb"]
)
def test_geometry_matches_nvml_placements(monkeypatch: pytest.MonkeyPatch, fixture: str) -> None:
    install_fake_nvml(monkeypatch, fixture)
    for gpu in probe_topology().gpus:
        stripped = dataclasses.replace(
            gpu,
            profiles=tuple(dataclasses.replace(p, placements=(), placement_size=0) for p in gpu.profiles),
            memory_slice_count=0,
        )
        rebuilt = with_standard_placements(stripped)
        assert rebuilt.memory_slice_count == gpu.memory_slice_count
        for real, derived in zip(gpu.profiles, rebuilt.profiles, strict=True):
            assert (derived.placements, derived.placement_size) == (real.placements, real.placement_size), real.name
