"""Every NVML fixture through the real pynvml -> probe -> planner -> deployment options, without a cluster."""

from __future__ import annotations

import pytest

from orchestrator.capabilities import Capabilities
from orchestrator.config import parse_config
from orchestrator.contracts.errors import PlanError
from orchestrator.hardware.probe import probe_topology
from orchestrator.model_source import ModelFootprint
from orchestrator.planning.mig_layout import plan_layout
from orchestrator.planning.mig_planner import capacity_for_sms
from orchestrator.planning.planner import plan
from orchestrator.serving.deploy import actor_options
from tests.fake_nvml import install_fake_nvml, machine_of

MINILM = ModelFootprint(parameters=22_700_000, stored_dtype_bytes=4)


def config(*types: str):
    return parse_config({"mig_instances": [{"name": f"i{n}", "type": t} for n, t in enumerate(types)]})


def placed(monkeypatch: pytest.MonkeyPatch, fixture: str, *types: str):
    install_fake_nvml(monkeypatch, fixture)
    return plan(config(*types), probe_topology(), MINILM)


def bindings(placement) -> list[tuple[str, str, int | None, int]]:
    return [(i.gpu.kind, i.gpu.profile, i.gpu.gpu_instance_id, i.capacity) for i in placement.instances]


def test_a100_40gb_seven_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    placement = placed(monkeypatch, "a100_40gb_7x1g5gb", "1g.5gb", "1g.5gb", "1g.5gb")
    assert [b[:2] for b in bindings(placement)] == [("mig", "1g.5gb")] * 3
    uuids = [i.gpu.device_uuid for i in placement.instances]
    assert len(set(uuids)) == 3 and all(u.startswith("MIG-") for u in uuids)
    assert all(i.gpu.gpu_uuid.startswith("GPU-") and i.gpu.sm_count == 14 for i in placement.instances)
    # The first slice holds process 31337 (1200 MiB): skipped with a note, so 3 slices are left unused, not 4.
    assert [n for n in placement.notes if "skipped" in n] == [
        "MIG slice 1g.5gb MIG-082b151d-86c0-4c40-ac1c-6703467bdfbf on GPU 0 skipped: used by process(es) 31337"
    ]
    assert "MIG-082b151d-86c0-4c40-ac1c-6703467bdfbf" not in uuids
    assert sum("unused MIG slice" in n for n in placement.notes) == 3
    options = actor_options(placement.instances)
    assert options["num_cpus"] == 0 and "num_gpus" not in options
    # Each replica claims one slice of its profile from Ray: nothing else booked on Ray can take it.
    assert options["resources"] == {"mig_1g.5gb": 1}
    assert options["runtime_env"]["env_vars"]["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"] == "1"
    assert "label_selector" not in options  # one machine: Serve places replicas anywhere on it


def test_a100_80gb_mixed_capacities_follow_sms(monkeypatch: pytest.MonkeyPatch) -> None:
    placement = placed(monkeypatch, "a100_80gb_mixed", "3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb")
    capacity = {i.profile: i.capacity for i in placement.instances}
    assert capacity == {"3g.40gb": 21, "2g.20gb": 14, "1g.10gb": 7}
    assert placement.notes == ()


def test_h100_has_no_1g5gb_and_says_what_it_has(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        PlanError, match=r"profile '1g.5gb' does not exist on these GPUs \(GPU 0 \(NVIDIA H100.*1g.10gb"
    ):
        placed(monkeypatch, "h100_80gb_mixed", "1g.5gb")
    placement = placed(monkeypatch, "h100_80gb_mixed", "3g.40gb", "1g.10gb")
    assert [(p, sms) for p, sms in ((i.profile, i.gpu.sm_count) for i in placement.instances)] == [
        ("3g.40gb", 60),
        ("1g.10gb", 16),
    ]


def test_h200_and_a30(monkeypatch: pytest.MonkeyPatch) -> None:
    h200 = placed(monkeypatch, "h200_mixed", "2g.35gb", "1g.18gb")
    assert [b[1] for b in bindings(h200)] == ["2g.35gb", "1g.18gb"]
    a30 = placed(monkeypatch, "a30_4x1g6gb", *["1g.6gb"] * 4)
    assert len(a30.instances) == 4
    with pytest.raises(PlanError, match="no free 1g.6gb slice"):
        placed(monkeypatch, "a30_4x1g6gb", *["1g.6gb"] * 5)


def test_mig_disabled_pending_and_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PlanError, match=r"MIG is disabled on GPU 0 .*sudo nvidia-smi -i 0 -mig 1"):
        placed(monkeypatch, "a100_mig_disabled", "1g.5gb")
    with pytest.raises(PlanError, match=r"waiting for a GPU reset: run sudo nvidia-smi -r -i 0"):
        placed(monkeypatch, "a100_mig_pending_reset", "1g.5gb")
    with pytest.raises(PlanError, match=r"no free 1g.5gb slice \(free slices: none\).*-cgi 19 -C"):
        placed(monkeypatch, "a100_mig_no_instances", "1g.5gb")


def test_mig_and_whole_gpu_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    placement = placed(monkeypatch, "two_gpus_mig_and_whole", "3g.40gb", "gpu")
    kinds = [(i.gpu.kind, i.gpu.gpu_index) for i in placement.instances]
    assert kinds == [("mig", 0), ("gpu", 1)]
    assert placement.instances[1].gpu.device_uuid.startswith("GPU-")
    assert any("unused MIG slice on GPU 0: 3g.40gb" in n for n in placement.notes)


def test_one_instance_on_two_whole_gpus_beside_mig(monkeypatch: pytest.MonkeyPatch) -> None:
    """No fixture has two GPUs without MIG: this machine takes GPU 0 (MIG) and GPU 1 (L4) of
    two_gpus_mig_and_whole and the A100 with MIG off of a100_mig_disabled, through the real probe."""
    install_fake_nvml(
        monkeypatch,
        machine_of(("two_gpus_mig_and_whole", 0), ("two_gpus_mig_and_whole", 1), ("a100_mig_disabled", 0)),
    )
    topology = probe_topology()
    instances = [{"name": "slice", "type": "3g.40gb"}, {"name": "big", "type": "gpu", "gpus": 2}]
    placement = plan(parse_config({"mig_instances": instances}), topology, MINILM, Capabilities(accelerate=True))
    big = placement.instances[1].gpu
    assert big.device_uuids == (topology.gpus[1].uuid, topology.gpus[2].uuid) and big.gpu_indices == (1, 2)
    assert big.memory_mb == 23034 + 40960
    assert placement.instances[1].capacity == capacity_for_sms(128) + capacity_for_sms(98)  # L4 (no MIG table) + A100
    assert placement.device_kind == "mig+gpu"
    with pytest.raises(PlanError, match="gpus: 3 needs 3 whole GPUs .* 2 of the 3 GPU.* and 2 of them are free"):
        plan(parse_config({"mig_instances": [{"name": "big", "type": "gpu", "gpus": 3}]}), topology, MINILM)


def test_lost_gpu_is_skipped_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_nvml(monkeypatch, "gpu_lost")
    topology = probe_topology()
    assert [g.index for g in topology.gpus] == [0] and any("GPU 1" in w for w in topology.warnings)
    placement = plan(config("3g.20gb"), topology, MINILM)
    assert placement.instances[0].gpu.gpu_index == 0


@pytest.mark.parametrize("fixture", ["library_missing", "no_devices"])
def test_no_usable_gpu_falls_back_to_cpu_pools(monkeypatch: pytest.MonkeyPatch, fixture: str) -> None:
    install_fake_nvml(monkeypatch, fixture)
    topology = probe_topology()
    assert topology.gpus == () and topology.gpu_note.startswith("No GPU found")
    placement = plan(config("1g.5gb", "1g.5gb"), topology, MINILM)
    assert placement.device_kind == "cpu" and all(i.gpu is None for i in placement.instances)
    options = actor_options(placement.instances)
    assert "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES" not in options["runtime_env"]["env_vars"]
    assert "resources" not in options and "num_gpus" not in options  # CPU pools are pinned by affinity


def test_mig_plan_on_a_disabled_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_nvml(monkeypatch, "a100_mig_disabled")
    layout = plan_layout(config("3g.20gb", "1g.5gb", "1g.5gb"), probe_topology())
    assert layout.commands[:2] == ["nvidia-smi -i 0 -mig 1", "nvidia-smi -r -i 0"]
    assert layout.commands[-1] == "nvidia-smi mig -i 0 -cgi 9,19,19 -C"
    assert any("process" in note for note in layout.gpus[0].notes)


def test_metric_labels_of_mig_and_cpu_instances_follow_dcgm(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.contracts.replica_spec import ReplicaSpec
    from workers.assembly import metric_labels

    install_fake_nvml(monkeypatch, "a100_80gb_mixed")
    topology = probe_topology()
    placement = plan(config("1g.10gb", "cpu"), topology, MINILM)
    spec = ReplicaSpec(
        placement, None, "/m", "minilm", "auto", "auto", "auto", "right", {}, None, "none", None, None, True, 8, 1000
    )
    mig, cpu = (metric_labels(spec, instance) for instance in placement.instances)
    gpu = topology.gpus[0]
    slice_ = next(s for s in gpu.slices if s.uuid == placement.instances[0].gpu.device_uuid)
    assert mig == {
        "instance": "i0",
        "model": "minilm",
        "node": mig["node"],
        "device_kind": "mig",
        "gpu": "0",
        "UUID": gpu.uuid,  # the parent GPU, as dcgm-exporter writes it
        "GPU_I_ID": str(slice_.gpu_instance_id),
        "GPU_I_PROFILE": "1g.10gb",
    }
    assert cpu["device_kind"] == "cpu" and "GPU_I_ID" not in cpu
