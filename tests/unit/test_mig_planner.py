"""GPU placement on hand-built topologies with the real A100/H100 profile tables (mig-nvml.md section 2)."""

from __future__ import annotations

import pytest

from orchestrator.capabilities import Capabilities
from orchestrator.config import parse_config
from orchestrator.contracts.errors import PlanError
from orchestrator.hardware.topology import CpuTopology, GpuInfo, MigProfile, MigSlice, Topology
from orchestrator.model_source import ModelFootprint
from orchestrator.planning.mig_planner import capacity_for_sms
from orchestrator.planning.planner import plan

A100_40GB = (
    MigProfile("1g.5gb", 19, 1, 4864, 14, 7, (0, 1, 2, 3, 4, 5, 6), 1),
    MigProfile("1g.10gb", 15, 1, 9856, 14, 4, (0, 2, 4, 6), 2),
    MigProfile("2g.10gb", 14, 2, 9856, 28, 3, (0, 2, 4), 2),
    MigProfile("3g.20gb", 9, 3, 19968, 42, 2, (0, 4), 4),
    MigProfile("4g.20gb", 5, 4, 19968, 56, 1, (0,), 4),
    MigProfile("7g.40gb", 0, 7, 40192, 98, 1, (0,), 8),
)
H100_80GB = (
    MigProfile("1g.10gb", 19, 1, 9984, 16, 7, (0, 1, 2, 3, 4, 5, 6), 1),
    MigProfile("1g.20gb", 15, 1, 20096, 26, 4, (0, 2, 4, 6), 2),
    MigProfile("2g.20gb", 14, 2, 20096, 32, 3, (0, 2, 4), 2),
    MigProfile("3g.40gb", 9, 3, 40448, 60, 2, (0, 4), 4),
    MigProfile("7g.80gb", 0, 7, 81152, 132, 1, (0,), 8),
)
SMALL_MODEL = ModelFootprint(parameters=23_000_000, stored_dtype_bytes=4)
QWEN3_4B = ModelFootprint(parameters=4_000_000_000, stored_dtype_bytes=2)
ACCELERATE = Capabilities(accelerate=True)  # as on GPU nodes with the gpu extra: what splits a model over GPUs


def mig(index: int, gpu: str, profile: MigProfile, gi: int) -> MigSlice:
    return MigSlice(
        f"MIG-{gpu[-4:]}{gi:04d}-0000-0000-0000-000000000000",
        profile.name,
        gi,
        0,
        profile.memory_mb,
        profile.sm_count,
        index,
        gpu,
    )


def a100(index: int = 0, layout: tuple[tuple[str, int], ...] = (), **state: bool) -> GpuInfo:
    uuid = f"GPU-a100000{index}-0000-0000-0000-000000000000"
    table = {p.name: p for p in A100_40GB}
    slices = tuple(mig(index, uuid, table[name], gi) for name, gi in layout)
    mode = {"mig_supported": True, "mig_enabled": True, "mig_pending_enabled": True, **state}
    return GpuInfo(
        index, "NVIDIA A100-SXM4-40GB", uuid, 40960, slices=slices, profiles=A100_40GB, memory_slice_count=8, **mode
    )


def topo(*gpus: GpuInfo) -> Topology:
    return Topology(cpu=CpuTopology(cores=(0, 1, 2, 3)), gpus=gpus)


def config(*types: str, **sections: object):
    return parse_config({"mig_instances": [{"name": f"i{n}", "type": t} for n, t in enumerate(types)], **sections})


SEVEN_1G = tuple(("1g.5gb", gi) for gi in (7, 8, 9, 10, 11, 12, 13))


def test_each_instance_gets_its_own_slice_in_order() -> None:
    placement = plan(config("1g.5gb", "1g.5gb", "1g.5gb"), topo(a100(layout=SEVEN_1G)), SMALL_MODEL)
    assert placement.device_kind == "mig"
    bindings = [i.gpu for i in placement.instances]
    assert [b.gpu_instance_id for b in bindings] == [7, 8, 9]
    assert len({b.device_uuid for b in bindings}) == 3 and all(b.device_uuid.startswith("MIG-") for b in bindings)
    assert all(i.cpu_cores == () and i.device == "mig" for i in placement.instances)
    assert sum("unused MIG slice" in n for n in placement.notes) == 4


def test_capacity_follows_sm_count() -> None:
    layout = (("3g.20gb", 1), ("2g.10gb", 5), ("1g.5gb", 13))
    placement = plan(config("3g.20gb", "1g.5gb", "2g.10gb"), topo(a100(layout=layout)), SMALL_MODEL)
    capacities = {i.profile: i.capacity for i in placement.instances}
    assert capacities == {"3g.20gb": 21, "2g.10gb": 14, "1g.5gb": 7}
    assert capacities["3g.20gb"] == 3 * capacities["1g.5gb"]
    assert capacity_for_sms(1) == 1


def test_unknown_profile_lists_what_each_gpu_has() -> None:
    h100 = GpuInfo(0, "NVIDIA H100 80GB HBM3", "GPU-h", 81559, True, True, True, (), H100_80GB, 8)
    with pytest.raises(PlanError) as caught:
        plan(config("1g.5gb"), topo(h100), SMALL_MODEL)
    assert "profile '1g.5gb' does not exist on these GPUs (GPU 0 (NVIDIA H100 80GB HBM3): 1g.10gb, 1g.20gb" in str(
        caught.value
    )


def test_more_instances_than_slices_names_the_free_ones_and_the_fix() -> None:
    layout = (("1g.5gb", 7), ("3g.20gb", 1))
    with pytest.raises(PlanError) as caught:
        plan(config("1g.5gb", "1g.5gb", "2g.10gb"), topo(a100(layout=layout)), SMALL_MODEL)
    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("instance 'i1': no free 1g.5gb slice (free slices: GPU 0: 3g.20gb)")
    assert "sudo nvidia-smi mig -i 0 -cgi 19 -C" in lines[0]
    assert "sudo nvidia-smi mig -i 0 -cgi 14 -C" in lines[1]


def test_model_too_big_for_its_slice() -> None:
    with pytest.raises(PlanError, match=r"needs about \d+ MiB .* 1g.5gb on GPU 0 has 4864 MiB: choose a bigger"):
        plan(config("1g.5gb"), topo(a100(layout=SEVEN_1G)), QWEN3_4B)
    roomy = plan(config("3g.20gb"), topo(a100(layout=(("3g.20gb", 1),))), QWEN3_4B)
    assert roomy.instances[0].gpu.memory_mb == 19968


def test_mig_disabled_pending_and_unsupported() -> None:
    with pytest.raises(PlanError, match=r"MIG is disabled on GPU 0 .* sudo nvidia-smi -i 0 -mig 1"):
        plan(config("1g.5gb"), topo(a100(mig_enabled=False, mig_pending_enabled=False)), SMALL_MODEL)
    with pytest.raises(PlanError, match=r"waiting for a GPU reset: run sudo nvidia-smi -r -i 0"):
        plan(config("1g.5gb"), topo(a100(mig_enabled=False, mig_pending_enabled=True)), SMALL_MODEL)
    l4 = GpuInfo(0, "NVIDIA L4", "GPU-l4", 23034)
    with pytest.raises(PlanError, match="does not exist on these GPUs"):
        plan(config("1g.5gb"), topo(l4), SMALL_MODEL)


def test_whole_gpus_and_cpu_instances_beside_mig() -> None:
    l4 = GpuInfo(1, "NVIDIA L4", "GPU-l4000000-0000-0000-0000-000000000000", 23034)
    placement = plan(config("1g.5gb", "gpu", "cpu"), topo(a100(layout=SEVEN_1G), l4), SMALL_MODEL)
    devices = [(i.device, i.gpu.device_uuid if i.gpu else i.cpu_cores) for i in placement.instances]
    assert devices[0][0] == "mig" and devices[1] == ("gpu", l4.uuid) and devices[2][0] == "cpu"
    assert [i.rank for i in placement.instances] == [0, 1, 2]
    assert placement.device_kind == "mig+gpu+cpu"
    with pytest.raises(PlanError, match="no whole GPU without MIG is left"):
        plan(config("gpu", "gpu"), topo(a100(layout=SEVEN_1G), l4), SMALL_MODEL)


def test_unused_whole_gpu_is_reported() -> None:
    l4 = GpuInfo(1, "NVIDIA L4", "GPU-l4", 23034)
    placement = plan(config("1g.5gb"), topo(a100(layout=SEVEN_1G), l4), SMALL_MODEL)
    assert any("unused whole GPU 1 (NVIDIA L4)" in note for note in placement.notes)


def test_footprint_estimate() -> None:
    assert SMALL_MODEL.gpu_memory_mb(2) < 1200
    assert QWEN3_4B.gpu_memory_mb(2) > 8000


def l4(index: int) -> GpuInfo:
    return GpuInfo(index, "NVIDIA L4", f"GPU-l4{index:06d}-0000-0000-0000-000000000000", 23034)


def spanning(gpus: int, *others: str, **sections: object):
    instances = [
        {"name": "big", "type": "gpu", "gpus": gpus},
        *({"name": f"i{n}", "type": t} for n, t in enumerate(others)),
    ]
    return parse_config({"mig_instances": instances, **sections})


def test_an_instance_spans_several_whole_gpus() -> None:
    placement = plan(spanning(2, "1g.5gb"), topo(a100(layout=SEVEN_1G), l4(1), l4(2)), SMALL_MODEL, ACCELERATE)
    big = placement.instances[0]
    assert (big.device, big.gpu.kind, big.gpu.device_uuid) == ("gpu", "gpu", l4(1).uuid)
    assert big.gpu.device_uuids == (l4(1).uuid, l4(2).uuid) and big.gpu.gpu_indices == (1, 2)
    assert big.gpu.device_count == 2 and big.gpu.memory_mb == 2 * 23034 and big.gpu.sm_count == 2 * 128
    assert big.capacity == 2 * capacity_for_sms(128)
    single = plan(spanning(1), topo(l4(0)), SMALL_MODEL).instances[0].gpu
    assert single.device_uuids == (single.device_uuid,) and single.gpu_indices == (0,) and single.device_count == 1
    assert placement.instances[1].gpu.device_uuids == (placement.instances[1].gpu.device_uuid,)  # MIG: one device


def test_too_few_whole_gpus_says_how_many_exist_and_are_free() -> None:
    with pytest.raises(PlanError) as caught:
        plan(spanning(3, "gpu"), topo(a100(layout=SEVEN_1G), l4(1), l4(2)), SMALL_MODEL)
    assert str(caught.value) == (
        "instance 'big': gpus: 3 needs 3 whole GPUs without MIG on one machine, but 2 of the 3 GPU(s) here are "
        "without MIG and 2 of them are free: lower gpus, or turn MIG off on more GPUs"
    )
    taken_first = parse_config(
        {"mig_instances": [{"name": "one", "type": "gpu"}, {"name": "big", "type": "gpu", "gpus": 2}]}
    )
    with pytest.raises(PlanError, match="^instance 'big': gpus: 2 needs .* 2 of the 2 GPU.* and 1 of them are free"):
        plan(taken_first, topo(l4(0), l4(1)), SMALL_MODEL)


def test_model_memory_is_compared_to_the_sum_of_the_gpus() -> None:
    big_model = ModelFootprint(parameters=12_000_000_000, stored_dtype_bytes=2)  # about 26 GB in fp16
    with pytest.raises(
        PlanError,
        match=r"^instance 'big': the model needs about \d+ MiB .* whole GPU\(s\) 0 have "
        r"23034 MiB together: raise gpus",
    ):
        plan(spanning(1), topo(l4(0), l4(1)), big_model)
    assert plan(spanning(2), topo(l4(0), l4(1)), big_model, ACCELERATE).instances[0].gpu.memory_mb == 46068


def test_spanning_needs_accelerate_and_a_splittable_model() -> None:
    two = topo(l4(0), l4(1))
    with pytest.raises(PlanError, match="^instance 'big': gpus: 2 splits the model with accelerate, which does not"):
        plan(spanning(2), two, SMALL_MODEL, Capabilities(accelerate=False))
    plan(spanning(1), two, SMALL_MODEL, Capabilities(accelerate=False))  # one GPU needs no device map
    mpnet = ModelFootprint(parameters=100_000_000, stored_dtype_bytes=4, model_type="mpnet")
    with pytest.raises(PlanError, match="^instance 'big': gpus: 2: mpnet declares no layers that must stay whole"):
        plan(spanning(2), two, mpnet, ACCELERATE)
