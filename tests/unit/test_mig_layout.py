"""`mig plan`: which nvidia-smi commands create the configured layout, and why a layout cannot fit."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.contracts.errors import PlanError
from orchestrator.hardware.topology import GpuInfo
from orchestrator.planning.mig_layout import fit_placements, plan_layout
from tests.unit.test_mig_planner import A100_40GB, SEVEN_1G, a100, config, topo

TABLE = {p.name: p for p in A100_40GB}


def test_fit_respects_placements_and_limits() -> None:
    # 3g at 0 would leave 1g.5gb the start 7, which it does not have: the 3g goes to 4.
    assert fit_placements([TABLE["3g.20gb"], TABLE["2g.10gb"], TABLE["1g.5gb"], TABLE["1g.5gb"]], 8) == [4, 0, 2, 3]
    # Two 3g fill starts 0 and 4; a third has no start left, and the profile allows 2 per GPU.
    assert fit_placements([TABLE["3g.20gb"]] * 3, 8) is None
    # 7 x 1g.5gb fit (starts 0..6); an eighth does not, though a memory slice is free.
    assert fit_placements([TABLE["1g.5gb"]] * 7, 8) is not None
    assert fit_placements([TABLE["1g.5gb"]] * 8, 8) is None


def test_commands_for_a_gpu_with_mig_disabled() -> None:
    gpu = a100(mig_enabled=False, mig_pending_enabled=False)
    layout = plan_layout(config("1g.5gb", "3g.20gb", "2g.10gb", "1g.5gb"), topo(gpu))
    assert layout.commands == [
        "nvidia-smi -i 0 -mig 1",
        "nvidia-smi -r -i 0",
        "nvidia-smi mig -i 0 -cgi 14,19,19,9 -C",  # 2g@0, 1g@2, 1g@3, 3g@4: see creation_order
    ]
    assert "memory-slice order" in layout.gpus[0].notes[0]
    simple = plan_layout(
        config("1g.5gb", "3g.20gb", "1g.5gb"), topo(a100(mig_enabled=False, mig_pending_enabled=False))
    )
    assert simple.commands[-1] == "nvidia-smi mig -i 0 -cgi 9,19,19 -C"  # largest first when that fits


def test_existing_other_layout_is_destroyed_first_and_said_so() -> None:
    layout = plan_layout(config("3g.20gb", "3g.20gb"), topo(a100(layout=SEVEN_1G)))
    assert layout.commands == [
        "nvidia-smi mig -i 0 -dci",
        "nvidia-smi mig -i 0 -dgi",
        "nvidia-smi mig -i 0 -cgi 9,9 -C",
    ]
    assert len(layout.gpus[0].destroys) == 7


def test_matching_layout_needs_nothing() -> None:
    layout = plan_layout(config(*["1g.5gb"] * 7), topo(a100(layout=SEVEN_1G)))
    assert layout.commands == [] and "nothing to do" in layout.gpus[0].notes[0]


def test_overflow_goes_to_the_next_gpu_and_then_fails_with_reasons() -> None:
    two = topo(
        a100(0, mig_enabled=False, mig_pending_enabled=False), a100(1, mig_enabled=False, mig_pending_enabled=False)
    )
    layout = plan_layout(config("3g.20gb", "3g.20gb", "3g.20gb"), two)
    assert [len(g.profiles) for g in layout.gpus] == [2, 1]
    with pytest.raises(PlanError, match=r"no room for another 3g.20gb .*GPU 1 .* holds 3g.20gb, 3g.20gb"):
        plan_layout(config(*["3g.20gb"] * 5), two)


def test_busy_gpu_and_unknown_profile_and_no_mig_gpu() -> None:
    busy = dataclasses.replace(a100(mig_enabled=False, mig_pending_enabled=False), process_pids=(4242,))
    layout = plan_layout(config("1g.5gb"), topo(busy))
    assert any("4242" in note for note in layout.gpus[0].notes)
    with pytest.raises(PlanError, match=r"profile '1g.10gb\+gfx' exists on no MIG-capable GPU"):
        plan_layout(config("1g.10gb+gfx"), topo(a100()))
    with pytest.raises(PlanError, match="no MIG-capable GPU here"):
        plan_layout(config("1g.5gb"), topo(GpuInfo(0, "NVIDIA L4", "GPU-l4", 23034)))
