"""Multi-node planning over fake nodes built from the NVML fixtures (real pynvml + probe), and the pure parts of the
cluster probe; no Ray cluster (``discover_nodes`` runs over a faked ``ray`` API)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from orchestrator.capabilities import Capabilities
from orchestrator.config import parse_config
from orchestrator.contracts.errors import PlanError
from orchestrator.contracts.plan import instances_by_node
from orchestrator.hardware import cluster_probe
from orchestrator.hardware.cluster_probe import (
    NodeTopology,
    alive_nodes,
    describe_node,
    discover_nodes,
    node_ip_resource,
    node_names,
)
from orchestrator.hardware.probe import probe_topology
from orchestrator.hardware.topology import CpuTopology, Topology
from orchestrator.model_source import ModelFootprint
from orchestrator.planning.cluster_planner import plan_cluster
from orchestrator.planning.planner import plan
from tests.fake_nvml import install_fake_nvml, machine_of

MINILM = ModelFootprint(parameters=22_700_000, stored_dtype_bytes=4)
CORES = CpuTopology(cores=tuple(range(8)))


def config(*types: str):
    return parse_config({"mig_instances": [{"name": f"i{n}", "type": t} for n, t in enumerate(types)]})


def node(monkeypatch: pytest.MonkeyPatch, fixture: str | None, ip: str, head: bool = False) -> NodeTopology:
    """A node whose topology the real probe reads from an NVML fixture (None: a node without NVIDIA driver)."""
    install_fake_nvml(monkeypatch, fixture or "library_missing")
    topology = dataclasses.replace(probe_topology(), cpu=CORES)
    return NodeTopology(f"id-{ip}", ip, f"host-{ip}", head, topology)


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> list[NodeTopology]:
    """A: A100-80GB with 3g.40gb + 2g.20gb + 2x 1g.10gb (head); B: H100 with 3g.40gb + 1g.20gb + 2x 1g.10gb;
    C: an A100-40GB with MIG disabled; D: no GPU."""
    return [
        node(monkeypatch, "a100_80gb_mixed", "10.0.0.1", head=True),
        node(monkeypatch, "h100_80gb_mixed", "10.0.0.2"),
        node(monkeypatch, "a100_mig_disabled", "10.0.0.3"),
        node(monkeypatch, None, "10.0.0.4"),
    ]


def where(placement) -> list[tuple[str | None, str, int]]:
    return [(i.node_ip, i.gpu.profile if i.gpu else "cpu", i.rank) for i in placement.instances]


def test_slices_found_only_on_another_node_land_there(cluster: list[NodeTopology]) -> None:
    # 1g.20gb exists as a slice only on the H100; the second 3g.40gb overflows from A to B.
    placement = plan_cluster(config("1g.20gb", "3g.40gb", "3g.40gb", "2g.20gb"), cluster, MINILM)
    assert where(placement) == [
        ("10.0.0.1", "3g.40gb", 0),
        ("10.0.0.1", "2g.20gb", 1),
        ("10.0.0.2", "1g.20gb", 2),
        ("10.0.0.2", "3g.40gb", 3),
    ]
    assert [i.name for i in placement.instances] == ["i1", "i3", "i0", "i2"]  # node by node, config order within
    b = placement.instances_on_node("id-10.0.0.2")
    assert [i.gpu.gpu_index for i in b] == [0, 0] and b[0].gpu.gpu_name.startswith("NVIDIA H100")
    assert all(i.node_id == f"id-{i.node_ip}" for i in placement.instances)
    assert placement.device_kind == "mig"
    assert "node 10.0.0.2: unused MIG slice on GPU 0: 1g.10gb" in "\n".join(placement.notes)
    assert "node 10.0.0.4: no GPU, no instance placed there" in placement.notes


def test_more_instances_than_slices_names_what_each_node_has(cluster: list[NodeTopology]) -> None:
    with pytest.raises(PlanError) as raised:
        plan_cluster(config("3g.40gb", "3g.40gb", "3g.40gb"), cluster, MINILM)
    message = raised.value.message
    assert "\n" not in message
    assert message.startswith("instance 'i2': no free 3g.40gb slice on any node (")
    assert "node 10.0.0.1 GPU 0 has 3g.40gb, 2g.20gb, 1g.10gb x2, free 2g.20gb, 1g.10gb x2" in message
    assert "node 10.0.0.2 GPU 0 has 3g.40gb, 1g.20gb, 1g.10gb x2, free 1g.20gb, 1g.10gb x2" in message
    assert "node 10.0.0.3 GPU 0: MIG off; node 10.0.0.4: no GPU" in message
    assert message.endswith("sudo nvidia-smi mig -i 0 -cgi 9 -C on node 10.0.0.1, or see orchestrator mig plan")


def test_unknown_profile_and_mig_disabled_node(cluster: list[NodeTopology]) -> None:
    with pytest.raises(PlanError) as raised:
        plan_cluster(config("7g.141gb", "1g.5gb"), cluster, MINILM)
    unknown, disabled = raised.value.message.splitlines()
    assert unknown.startswith("instance 'i0': profile '7g.141gb' does not exist on any node (node 10.0.0.1 GPU 0")
    assert "node 10.0.0.2 GPU 0 (NVIDIA H100 80GB HBM3): 1g.10gb" in unknown and unknown.endswith("10.0.0.4: no GPU)")
    # 1g.5gb is an A100-40GB profile: only node C knows it, and its MIG is off.
    assert disabled.startswith("node 10.0.0.3: instance 'i1': MIG is disabled on GPU 0 (NVIDIA A100-SXM4-40GB)")
    assert "sudo nvidia-smi -i 0 -mig 1" in disabled


def test_cpu_instances_land_on_the_head_and_a_gpu_less_node_adds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    head = node(monkeypatch, None, "10.0.0.1", head=True)
    nodes = [head, node(monkeypatch, "h100_80gb_mixed", "10.0.0.2"), node(monkeypatch, None, "10.0.0.3")]
    placement = plan_cluster(config("1g.10gb", "cpu", "cpu"), nodes, MINILM)
    assert where(placement) == [("10.0.0.1", "cpu", 0), ("10.0.0.1", "cpu", 1), ("10.0.0.2", "1g.10gb", 2)]
    assert [i.cpu_cores for i in placement.instances_on_node("id-10.0.0.1")] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert placement.device_kind == "mig+cpu"
    groups = instances_by_node(placement)
    assert list(groups) == ["id-10.0.0.1", "id-10.0.0.2"]  # node 10.0.0.3 has no instance
    assert [i.rank for i in groups["id-10.0.0.1"]] == [0, 1]
    assert placement.instance_for_node_rank("id-10.0.0.2", 0).gpu.profile == "1g.10gb"
    with pytest.raises(PlanError, match="replica rank 1 has no planned instance on node id-10.0.0.2"):
        placement.instance_for_node_rank("id-10.0.0.2", 1)
    assert "node 10.0.0.3: no GPU, no instance placed there" in placement.notes
    assert not any(n.startswith("node 10.0.0.1: no GPU") for n in placement.notes)  # the head serves CPU pools


def test_whole_gpus_across_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = [node(monkeypatch, "a100_80gb_mixed", "10.0.0.1", head=True)]
    nodes.append(node(monkeypatch, "two_gpus_mig_and_whole", "10.0.0.2"))
    placement = plan_cluster(config("gpu", "1g.10gb"), nodes, MINILM)
    assert [(i.node_ip, i.gpu.kind, i.gpu.gpu_index) for i in placement.instances] == [
        ("10.0.0.1", "mig", 0),
        ("10.0.0.2", "gpu", 1),
    ]
    with pytest.raises(PlanError, match=r"no whole GPU without MIG is left on any node \(node 10.0.0.1: 0 of 1"):
        plan_cluster(config("gpu", "gpu"), nodes, MINILM)


def test_an_instance_spanning_gpus_stays_on_one_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """Head: one L4 beside MIG; second node: an A100 with MIG off and an L4. gpus: 2 skips the head."""
    nodes = [node(monkeypatch, "two_gpus_mig_and_whole", "10.0.0.1", head=True)]
    pair = machine_of(("a100_mig_disabled", 0), ("two_gpus_mig_and_whole", 1))
    nodes.append(node(monkeypatch, pair, "10.0.0.2"))  # type: ignore[arg-type]
    raw = {"mig_instances": [{"name": "one", "type": "gpu"}, {"name": "big", "type": "gpu", "gpus": 2}]}
    # As on GPU nodes with the gpu extra: accelerate is what splits "big" (not needed on this CPU machine).
    placement = plan_cluster(parse_config(raw), nodes, MINILM, Capabilities(accelerate=True))
    assert [(i.name, i.node_ip, i.gpu.gpu_indices) for i in placement.instances] == [
        ("one", "10.0.0.1", (1,)),
        ("big", "10.0.0.2", (0, 1)),
    ]
    raw["mig_instances"][1]["gpus"] = 3
    with pytest.raises(PlanError) as caught:
        plan_cluster(parse_config(raw), nodes, MINILM, Capabilities(accelerate=True))
    assert str(caught.value) == (
        "instance 'big': gpus: 3 needs 3 whole GPUs without MIG on one node, and no node has that many free "
        "(node 10.0.0.1: 0 free of 1 without MIG; node 10.0.0.2: 2 free of 2 without MIG)"
    )


def test_what_imports_on_each_gpu_node_decides_for_its_instances(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU head without the gpu extra plans for GPU nodes that have it: each node's probed packages decide."""
    head = dataclasses.replace(node(monkeypatch, None, "10.0.0.1", head=True), packages=frozenset())
    split = dataclasses.replace(node(monkeypatch, "a100_mig_disabled", "10.0.0.2"), packages=frozenset({"accelerate"}))
    pair = machine_of(("a100_mig_disabled", 0), ("two_gpus_mig_and_whole", 1))
    two_gpus = node(monkeypatch, pair, "10.0.0.3")  # type: ignore[arg-type]
    big = dataclasses.replace(two_gpus, packages=frozenset({"accelerate"}))
    raw = {"mig_instances": [{"name": "one", "type": "gpu"}, {"name": "big", "type": "gpu", "gpus": 2}]}
    placement = plan_cluster(parse_config(raw), [head, split, big], MINILM, Capabilities(accelerate=False))
    assert [(i.name, i.node_ip) for i in placement.instances] == [("one", "10.0.0.2"), ("big", "10.0.0.3")]
    assert [line.split(":")[0] for line in placement.backend_lines] == ["node 10.0.0.2", "node 10.0.0.3"]

    without = dataclasses.replace(big, packages=frozenset())  # that node lacks accelerate: refused, naming it
    with pytest.raises(PlanError) as caught:
        plan_cluster(parse_config(raw), [head, split, without], MINILM, Capabilities(accelerate=True))
    assert str(caught.value).startswith("node 10.0.0.3: instance 'big': gpus: 2 splits the model with accelerate")

    raw["model"] = {"attn_implementation": "flash_attention_2"}  # flash attention: only where flash_attn imports
    flash = dataclasses.replace(big, packages=frozenset({"accelerate", "flash_attn"}))
    with pytest.raises(PlanError) as caught:
        plan_cluster(parse_config(raw), [head, split, flash], MINILM, Capabilities(flash_attn=True))
    assert str(caught.value).startswith("node 10.0.0.2: model: ")
    assert "10.0.0.3" not in str(caught.value)


def test_model_too_big_for_a_slice_names_the_node(cluster: list[NodeTopology]) -> None:
    huge = ModelFootprint(parameters=12_000_000_000, stored_dtype_bytes=2)
    with pytest.raises(PlanError, match=r"^node 10.0.0.2: instance 'i1': the model needs about \d+ MiB"):
        plan_cluster(config("3g.40gb", "1g.20gb"), cluster, huge)


def test_cpu_only_cluster_runs_on_the_head(monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = [node(monkeypatch, None, "10.0.0.1", head=True), node(monkeypatch, None, "10.0.0.2")]
    placement = plan_cluster(config("1g.10gb", "1g.10gb"), nodes, MINILM)
    assert [(i.node_ip, i.device) for i in placement.instances] == [("10.0.0.1", "cpu")] * 2
    assert placement.notes[0] == "no GPU on any of the 2 node(s): every instance runs on CPU pools of node 10.0.0.1"
    with pytest.raises(PlanError, match="head node could not be probed"):
        plan_cluster(config("1g.10gb"), nodes[1:], MINILM)


def test_cpu_instances_without_a_probed_head(monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = [node(monkeypatch, "h100_80gb_mixed", "10.0.0.2")]
    with pytest.raises(PlanError, match=r"^instances 'i1': CPU pools run on the head node, which could not be probed"):
        plan_cluster(config("1g.10gb", "cpu"), nodes, MINILM)
    with pytest.raises(PlanError, match="no node of the Ray cluster could be probed"):
        plan_cluster(config("1g.10gb"), [], MINILM)


def test_single_node_plans_stay_on_the_local_node(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_nvml(monkeypatch, "a100_80gb_mixed")
    placement = plan(config("3g.40gb", "cpu"), probe_topology(), MINILM)
    assert all(i.node_id is None and i.node_ip is None for i in placement.instances)
    assert instances_by_node(placement) == {None: placement.instances}
    assert placement.instances_on_node(None) == placement.instances
    assert placement.instance_for_rank(1) is placement.instance_for_node_rank(None, 1)


def ray_node(node_id: str, ip: str, head: bool = False, alive: bool = True) -> dict[str, Any]:
    """A record shaped like Ray 2.60's ``ray.nodes()`` (the keys the probe reads, and a few it ignores)."""
    resources = {"CPU": 1.0, node_ip_resource(ip): 1.0, **({"node:__internal_head__": 1.0} if head else {})}
    return {
        "NodeID": node_id,
        "Alive": alive,
        "NodeManagerAddress": ip,
        "NodeManagerHostname": "vm",
        "Resources": resources,
    }


def test_alive_nodes_head_first_then_by_ip() -> None:
    raw = [
        ray_node("d", "10.0.0.10"),
        ray_node("c", "10.0.0.9"),
        ray_node("x", "10.0.0.1", alive=False),
        ray_node("b", "10.0.0.9"),
        ray_node("h", "10.0.0.20", head=True),
    ]
    records = alive_nodes(raw)
    assert [(r.node_id, r.is_head) for r in records] == [("h", True), ("b", False), ("c", False), ("d", False)]
    names = node_names(records)
    assert names == {"h": "node 10.0.0.20", "b": "node 10.0.0.9 (b)", "c": "node 10.0.0.9 (c)", "d": "node 10.0.0.10"}


def test_describe_node(cluster: list[NodeTopology]) -> None:
    assert describe_node(cluster[0]) == (
        "node 10.0.0.1 (head, host host-10.0.0.1): 8 cores; "
        "GPU 0 NVIDIA A100-SXM4-80GB: MIG 3g.40gb, 2g.20gb, 1g.10gb x2"
    )
    assert describe_node(cluster[2], "node C").endswith("GPU 0 NVIDIA A100-SXM4-40GB: whole GPU")
    assert describe_node(cluster[3]) == (
        "node 10.0.0.4 (host host-10.0.0.4): 8 cores; no GPU (no NVIDIA driver (NVML Shared Library Not Found))"
    )


class FakeRay:
    """Just the ``ray`` calls ``discover_nodes`` makes; each node's task result is given up front."""

    def __init__(self, raw_nodes: list[dict[str, Any]], results: dict[str, object]) -> None:
        self.raw_nodes, self.results, self.cancelled, self.pinned = raw_nodes, results, [], []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import ray

        monkeypatch.setattr(ray, "nodes", lambda: self.raw_nodes)
        monkeypatch.setattr(ray, "remote", self.remote)
        monkeypatch.setattr(ray, "wait", self.wait)
        monkeypatch.setattr(ray, "get", self.get)
        monkeypatch.setattr(ray, "cancel", lambda ref, force: self.cancelled.append(ref))

    def remote(self, **options: object):
        assert options == {"num_cpus": 0, "max_retries": 0}
        fake = self

        class Task:
            def __init__(self, function) -> None:
                self.function = function

            def options(self, scheduling_strategy):
                assert scheduling_strategy.soft is False
                fake.pinned.append(scheduling_strategy.node_id)
                return self

            def remote(self, probe, model_folder=None):
                return fake.pinned[-1]  # the "object ref" is the node id

        return Task

    def wait(self, refs, num_returns, timeout):
        return [r for r in refs if self.results[r] != "hang"], [r for r in refs if self.results[r] == "hang"]

    def get(self, ref):
        result = self.results[ref]
        if isinstance(result, BaseException):
            raise result
        return result


def test_discover_nodes_skips_failed_and_silent_nodes_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray.exceptions

    h, w1, w2, w3, w4 = (f"{k:056x}" for k in range(1, 6))  # Ray node ids: 28 bytes in hex
    failure = ValueError("NVML exploded\nTraceback (most recent call last): ...")
    crash = ray.exceptions.WorkerCrashedError()
    topology = Topology(cpu=CORES)
    fake = FakeRay(
        [ray_node(w1, "10.0.0.2"), ray_node(h, "10.0.0.1", head=True), ray_node(w2, "10.0.0.3")]
        + [ray_node(w3, "10.0.0.4"), ray_node(w4, "10.0.0.5")],
        {
            h: (topology, "head-host", frozenset(), True),
            w1: failure,
            w2: "hang",
            w3: crash,
            w4: (topology, "w4-host", frozenset({"accelerate"}), False),
        },
    )
    fake.install(monkeypatch)
    nodes, warnings = discover_nodes(timeout_s=1.5)
    assert fake.pinned == [h, w1, w2, w3, w4]
    assert [(n.node_id, n.hostname, n.is_head, n.packages, n.model_folder_present) for n in nodes] == [
        (h, "head-host", True, frozenset(), True),
        (w4, "w4-host", False, frozenset({"accelerate"}), False),
    ]
    assert warnings == (
        "node 10.0.0.2: hardware probe failed (ValueError: NVML exploded); node skipped",
        "node 10.0.0.3: hardware probe did not answer within 1.5 s; node skipped",
        f"node 10.0.0.4: hardware probe failed ({cluster_probe._one_line(crash)}); node skipped",
    )
    assert "\n" not in warnings[2] and fake.cancelled == [w2]


def test_each_node_gets_its_own_application_pinned_to_it(cluster: list[NodeTopology]) -> None:
    """What the deploy step makes of a cluster plan: one Serve application per node, its replicas held to that node
    by Ray's node-id label, and a front door spreading requests over the nodes by capacity."""
    from orchestrator.frontdoor.node_spread import NodeSpreadForwarder
    from orchestrator.serving.apps import app_name_of, deployment_groups
    from orchestrator.serving.deploy import NODE_ID_LABEL, actor_options, app_name_for, open_forwarder

    placement = plan_cluster(config("1g.20gb", "3g.40gb", "3g.40gb", "2g.20gb"), cluster, MINILM)
    nodes = ("id-10.0.0.1", "id-10.0.0.2")
    groups = deployment_groups(placement)
    # One deployment per node and MIG profile: Serve gives a deployment's replicas one set of Ray resources.
    assert {(node, claim): len(group) for (node, _, claim), group in groups.items()} == {
        ("id-10.0.0.1", "3g.40gb"): 1,
        ("id-10.0.0.1", "2g.20gb"): 1,
        ("id-10.0.0.2", "1g.20gb"): 1,
        ("id-10.0.0.2", "3g.40gb"): 1,
    }
    for (node_id, _, claim), group in groups.items():
        options = actor_options(group, node_id)
        assert options["label_selector"] == {NODE_ID_LABEL: node_id}
        assert options["resources"] == {f"mig_{claim}": 1}
        assert options["runtime_env"]["env_vars"]["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"] == "1"
    with pytest.raises(ValueError, match="one device claim"):
        actor_options(placement.instances_on_node(nodes[0]), nodes[0])
    names = {app_name_of(key, group) for key, group in groups.items()}
    assert len(names) == 4 and app_name_for(None, None) == "embeddings"
    assert app_name_for(None, None, None, "1g.10gb") == "embeddings-1g.10gb"
    spread = open_forwarder(placement)
    try:
        assert isinstance(spread, NodeSpreadForwarder)
        # A holds 3g.40gb + 2g.20gb, B 1g.20gb + 3g.40gb: one handle per deployment, capacities from their SMs.
        expected = [sum(i.capacity for i in group) for group in groups.values()]
        assert spread._capacity == expected and spread.readiness() == (4, 4)
    finally:
        for forwarder in spread._forwarders:
            forwarder.stop_watching()


def test_a_node_without_the_model_folder_is_refused_by_name(cluster: list[NodeTopology]) -> None:
    """B6: replicas load the head's path as is; a node that lacks it is named before anything is deployed."""
    cluster = [dataclasses.replace(n, model_folder_present=n.node_ip != "10.0.0.2") for n in cluster]
    with pytest.raises(PlanError, match=r"node 10\.0\.0\.2 \(host host-10\.0\.0\.2\): the model folder does not exist"):
        plan_cluster(config("3g.40gb", "3g.40gb"), cluster)
    # A node that gets no replica may lack it.
    assert plan_cluster(config("3g.40gb"), cluster).instances[0].node_ip == "10.0.0.1"


def test_the_probe_task_reports_whether_the_model_folder_exists(tmp_path) -> None:
    from orchestrator.hardware.cluster_probe import _probe_on_node

    topology = Topology(cpu=CORES)
    assert _probe_on_node(lambda: topology, str(tmp_path))[3] is True
    assert _probe_on_node(lambda: topology, str(tmp_path / "missing"))[3] is False
    assert _probe_on_node(lambda: topology)[3] is None
