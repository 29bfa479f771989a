"""Per-architecture driver floors (gpu-audit W6), read from probes of the fake NVML."""

from __future__ import annotations

import copy
import json

import pytest

from orchestrator.hardware.driver_floor import driver_floor_problems
from orchestrator.hardware.probe import probe_topology
from tests.fake_nvml import FIXTURES, install_fake_nvml


def with_driver(fixture: str, version: str) -> dict:
    raw = copy.deepcopy(json.loads((FIXTURES / f"{fixture}.json").read_text()))
    raw["driver_version"] = version
    return raw


@pytest.mark.parametrize(
    ("fixture", "driver", "needs"),
    [
        ("h200_mixed", "535.161.08", "550.90.07"),  # accepted by the old single floor (450.80.02)
        ("h100_80gb_mixed", "525.60.13", "525.85.12"),
        ("a100_r470", "460.106.00", "470.42.01"),
    ],
)
def test_a_driver_below_the_gpu_floor_is_named(monkeypatch, fixture: str, driver: str, needs: str) -> None:
    install_fake_nvml(monkeypatch, with_driver(fixture, driver))
    problems = driver_floor_problems(probe_topology())
    assert len(problems) == 1 and f">= {needs} for MIG; {driver} is installed" in problems[0]


@pytest.mark.parametrize("fixture", ["h200_mixed", "a100_80gb_mixed", "a30_4x1g6gb", "two_gpus_mig_and_whole"])
def test_the_fixture_drivers_are_new_enough(monkeypatch, fixture: str) -> None:
    install_fake_nvml(monkeypatch, fixture)
    assert driver_floor_problems(probe_topology()) == []
