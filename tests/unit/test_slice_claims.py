"""Ray resources per MIG slice: what a replica claims, what a node offers, and what is short before deploying."""

from __future__ import annotations

from collections import Counter

import pytest

from orchestrator.hardware.probe import probe_topology
from orchestrator.planning.planner import plan
from orchestrator.serving.apps import app_name_of, deployment_groups
from orchestrator.serving.slice_claims import claim_of, needed, offer_of_plan, offer_of_topology, shortfalls
from tests.fake_nvml import install_fake_nvml
from tests.unit.test_fixture_plans import MINILM, config


def test_a_mixed_gpu_is_deployed_per_profile_and_each_replica_claims_its_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_nvml(monkeypatch, "a100_80gb_mixed")
    placement = plan(config("3g.40gb", "1g.10gb", "2g.20gb", "1g.10gb"), probe_topology(), MINILM)
    groups = deployment_groups(placement)
    assert {key[2]: [i.name for i in group] for key, group in groups.items()} == {
        "3g.40gb": [placement.instances[0].name],
        "1g.10gb": [placement.instances[1].name, placement.instances[3].name],
        "2g.20gb": [placement.instances[2].name],
    }
    assert sorted(app_name_of(key, group) for key, group in groups.items()) == [
        "embeddings-1g.10gb",
        "embeddings-2g.20gb",
        "embeddings-3g.40gb",
    ]
    assert needed(placement.instances) == Counter({"mig_1g.10gb": 2, "mig_3g.40gb": 1, "mig_2g.20gb": 1})
    embedded = offer_of_plan(placement.instances)
    assert embedded.ray_init_kwargs() == {
        "num_gpus": 0,
        "resources": {"mig_3g.40gb": 1, "mig_1g.10gb": 2, "mig_2g.20gb": 1},
    }


def test_a_replica_of_a_deployment_group_serves_the_groups_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    """Serve numbers replicas 0.. within each deployment: the spec maps that rank to the plan's instance."""
    from orchestrator.contracts.replica_spec import ReplicaSpec

    install_fake_nvml(monkeypatch, "a100_80gb_mixed")
    placement = plan(config("3g.40gb", "1g.10gb", "2g.20gb", "1g.10gb"), probe_topology(), MINILM)
    ones = next(group for key, group in deployment_groups(placement).items() if key[2] == "1g.10gb")
    settings = config("1g.10gb")
    spec = ReplicaSpec.from_config(
        placement,
        None,
        {"model": settings.model, "server": settings.server},
        model_folder="/m",
        model_name="m",
        api_key_sha256=None,
        lane_token=None,
        instance_ranks=tuple(i.rank for i in ones),
    )
    assert [spec.instance_for_rank(r).rank for r in (0, 1)] == [1, 3]
    with pytest.raises(Exception, match="rank 2 has no planned instance"):
        spec.instance_for_rank(2)


def test_busy_slices_are_not_offered_and_whole_gpus_count_as_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_nvml(monkeypatch, "a100_40gb_7x1g5gb")  # its first slice holds another process
    offer = offer_of_topology(probe_topology())
    assert offer.num_gpus == 0 and dict(offer.slices) == {"mig_1g.5gb": 6}
    install_fake_nvml(monkeypatch, "two_gpus_mig_and_whole")
    both = offer_of_topology(probe_topology())
    assert both.num_gpus == 1 and both.slices  # the GPU with MIG off is one GPU to Ray, the other offers slices


def test_whole_gpu_instances_claim_num_gpus() -> None:
    from orchestrator.contracts.plan import GpuBinding, PlannedInstance

    def instance(uuids: tuple[str, ...]) -> PlannedInstance:
        binding = GpuBinding(
            "gpu",
            uuids[0],
            0,
            uuids[0],
            "H100",
            "gpu",
            80_000,
            132,
            device_uuids=uuids,
            gpu_indices=tuple(range(len(uuids))),
        )
        return PlannedInstance(0, "a", "gpu", "gpu", (0,), 1, 8, 1, 4096, 2.0, 64, 4, gpu=binding)

    assert claim_of(instance(("GPU-a",))).ray_options() == {"num_gpus": 1}
    two = claim_of(instance(("GPU-a", "GPU-b")))
    assert two.key == "gpux2" and two.amounts() == {"GPU": 2}


def test_shortfalls_name_the_node_and_the_fix() -> None:
    wanted = {"n1": Counter({"mig_1g.10gb": 3}), "n2": Counter({"GPU": 1})}
    total = {"n1": {"mig_1g.10gb": 3.0}, "n2": {"CPU": 8.0}}
    free = {"n1": {"mig_1g.10gb": 1.0}, "n2": {"CPU": 8.0}}
    problems = shortfalls(wanted, total, free, {"n1": "10.0.0.1", "n2": "10.0.0.2"})
    assert problems == [
        "node 10.0.0.1: 2 of the 3 mig_1g.10gb planned there are taken by another service or Ray job: stop it, "
        "or plan fewer instances there",
        "node 10.0.0.2 offers Ray 0 GPU and 1 are planned there: start that node with `orchestrator worker` "
        "(`--head` for the head): it offers its GPUs and MIG slices to Ray",
    ]
    assert shortfalls(wanted, total, total, {}) == [problems[1].replace("10.0.0.2", "n2")]
