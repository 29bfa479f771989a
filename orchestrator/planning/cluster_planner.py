"""Pure placement over a Ray cluster: (config, probed nodes) -> one plan whose instances name their node.

GPU and MIG instances go, in config order, to the first node (head first, then the given order) with a free slice of
their profile (or with ``gpus`` free whole GPUs without MIG: an instance spanning GPUs stays on one node); each node's
share is then bound by ``plan_gpu_instances`` on that node's own topology, so MIG profile tables, GPU indices and
memory checks stay per node exactly as in a single-node plan.
CPU-pool instances run on the head node only: it is where ``orchestrator up`` runs (the driver) and the one node
every cluster has; spreading CPU pools over nodes is left for when CPU-only clusters are in scope. A cluster without
any GPU is planned like one machine: every instance on CPU pools of the head node.

Instances are listed node by node (a node's GPU instances, then its CPU pools), so ``Plan.instances_on_node``
gives each per-node deployment its replicas' instances by Serve rank.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from orchestrator.capabilities import BASE_INSTALL, Capabilities
from orchestrator.config import Config, InstanceConfig
from orchestrator.contracts.errors import PlanError
from orchestrator.hardware.cluster_probe import NodeTopology, node_names, slice_counts
from orchestrator.hardware.topology import GpuInfo, MigSlice
from orchestrator.planning.mig_planner import plan_gpu_instances
from orchestrator.planning.planner import Footprints, Plan, PlannedInstance, check_engine, plan, plan_cpu_pools


def _usable(gpu: GpuInfo) -> bool:
    return gpu.mig_enabled and not gpu.mig_reset_pending


def _on_node(instance: PlannedInstance, node: NodeTopology) -> PlannedInstance:
    return dataclasses.replace(instance, node_id=node.node_id, node_ip=node.node_ip)


class _Assigner:
    """Hands out free slices and whole GPUs over all nodes, and says per node what exists when none is left."""

    def __init__(self, config: Config, nodes: Sequence[NodeTopology], names: dict[str, str]) -> None:
        self.config, self.nodes, self.names = config, nodes, names
        self.free: dict[tuple[str, int], list[MigSlice]] = {
            (n.node_id, g.index): list(g.slices) for n in nodes for g in n.topology.gpus if _usable(g)
        }
        self.whole = [(n, g) for n in nodes for g in n.topology.gpus if not g.mig_enabled and not g.mig_pending_enabled]

    def assign(self, instance: InstanceConfig) -> tuple[str | None, str | None]:
        """(node id, None) for the node that takes the instance, or (None, the one-line problem)."""
        where = f"instance {instance.name!r}"
        if instance.type == "gpu":
            return self._assign_whole(instance, where)
        knowing = [(n, g) for n in self.nodes for g in n.topology.gpus if g.profile(instance.type) is not None]
        if not knowing:
            return None, f"{where}: profile {instance.type!r} does not exist on any node ({self._tables()})"
        for (node_id, _), slices in self.free.items():
            mig = next((s for s in slices if s.profile == instance.type), None)
            if mig is not None:
                slices.remove(mig)
                return node_id, None
        usable = [(n, g) for n, g in knowing if _usable(g)]
        if not usable:
            return None, self._node_state_problem(knowing[0][0], instance)
        node, gpu = usable[0]
        profile = gpu.profile(instance.type)
        assert profile is not None
        return None, (
            f"{where}: no free {instance.type} slice on any node ({self._slices_summary()}); create one with "
            f"sudo nvidia-smi mig -i {gpu.index} -cgi {profile.profile_id} -C on {self.names[node.node_id]}, "
            "or see orchestrator mig plan"
        )

    def _assign_whole(self, instance: InstanceConfig, where: str) -> tuple[str | None, str | None]:
        """The first node (in node order) with ``instance.gpus`` free whole GPUs takes them; a model is not split
        across machines."""
        for node in self.nodes:
            mine = [entry for entry in self.whole if entry[0] is node]
            if len(mine) >= instance.gpus:
                for entry in mine[: instance.gpus]:
                    self.whole.remove(entry)
                return node.node_id, None
        if instance.gpus == 1:
            return None, f"{where}: no whole GPU without MIG is left on any node ({self._whole_summary()})"
        free = "; ".join(
            f"{self.names[n.node_id]}: {sum(entry[0] is n for entry in self.whole)} free of "
            f"{sum(not g.mig_enabled and not g.mig_pending_enabled for g in n.topology.gpus)} without MIG"
            for n in self.nodes
        )
        return None, (
            f"{where}: gpus: {instance.gpus} needs {instance.gpus} whole GPUs without MIG on one node, and no node has "
            f"that many free ({free})"
        )

    def _node_state_problem(self, node: NodeTopology, instance: InstanceConfig) -> str:
        """Why MIG cannot serve the instance on that node (disabled, waiting for a reset), in the single-node
        planner's own words."""
        try:
            plan_gpu_instances(self.config, node.topology, [instance], None)
        except PlanError as error:
            return f"{self.names[node.node_id]}: {error.message.splitlines()[0]}"
        return f"instance {instance.name!r}: no usable {instance.type} slice on {self.names[node.node_id]}"

    def _tables(self) -> str:
        """Each GPU's MIG profile table, node by node."""
        parts = []
        for node in self.nodes:
            name = self.names[node.node_id]
            parts += [
                f"{name} GPU {g.index} ({g.name}): {', '.join(p.name for p in g.profiles) or 'no MIG'}"
                for g in node.topology.gpus
            ]
            parts += [] if node.topology.gpus else [f"{name}: no GPU"]
        return "; ".join(parts)

    def _slices_summary(self) -> str:
        """Each GPU's existing and still free slices, node by node."""
        parts = []
        for node in self.nodes:
            name = self.names[node.node_id]
            for g in node.topology.gpus:
                if _usable(g):
                    free = self.free[(node.node_id, g.index)]
                    parts.append(f"{name} GPU {g.index} has {slice_counts(g.slices)}, free {slice_counts(free)}")
                else:
                    parts.append(f"{name} GPU {g.index}: MIG {'waits for a reset' if g.mig_enabled else 'off'}")
            parts += [] if node.topology.gpus else [f"{name}: no GPU"]
        return "; ".join(parts)

    def _whole_summary(self) -> str:
        """How many GPUs without MIG each node has (all of them already taken when this is asked)."""
        parts, total = [], 0
        for node in self.nodes:
            gpus = node.topology.gpus
            without = sum(not g.mig_enabled and not g.mig_pending_enabled for g in gpus)
            total += without
            parts.append(f"{self.names[node.node_id]}: {without} of {len(gpus)} GPU(s) without MIG")
        return "; ".join(parts) + (", all taken by earlier instances" if total else "")


def _cpu_only_cluster(
    config: Config,
    nodes: Sequence[NodeTopology],
    head: NodeTopology | None,
    names: dict[str, str],
    footprint: Footprints,
    capabilities: Capabilities,
) -> Plan:
    """No GPU anywhere: the single-node CPU plan of the head node."""
    if head is None:
        raise PlanError("no node has a GPU and the head node could not be probed: nowhere to run the CPU pools")
    head_problems = _node_problems(config, [head], names, {head.node_id: []}, head)
    if head_problems:
        raise PlanError("\n".join(head_problems))
    single = plan(config, head.topology, footprint, capabilities)
    note = f"no GPU on any of the {len(nodes)} node(s): every instance runs on CPU pools of {names[head.node_id]}"
    return dataclasses.replace(
        single, instances=tuple(_on_node(i, head) for i in single.instances), notes=(note, *single.notes)
    )


def _check_engine_per_node(
    config: Config,
    planned: list[PlannedInstance],
    nodes: Sequence[NodeTopology],
    names: dict[str, str],
    footprint: Footprints,
    capabilities: Capabilities,
) -> tuple[list[PlannedInstance], list[str]]:
    """``check_engine`` for each node's instances with what imports on that node (``Capabilities.on_node``): the
    replicas load their model there, not here. Nodes whose packages were not looked up get ``capabilities`` whole.
    Lines and problems are prefixed with the node's name when instances run on more than one node."""
    by_node = {n.node_id: n for n in nodes}
    groups: dict[str, list[PlannedInstance]] = {}
    for instance in planned:
        groups.setdefault(str(instance.node_id), []).append(instance)
    prefix = len(groups) > 1
    chosen: dict[str, PlannedInstance] = {}
    lines: list[str] = []
    problems: dict[str, list[str]] = {}  # problem -> the nodes it was found on (model-wide ones: every node)
    for node_id, instances in groups.items():
        on_node = capabilities.on_node(by_node[node_id].packages)
        try:
            checked, node_lines = check_engine(config, instances, footprint, on_node)
        except PlanError as error:
            for line in error.message.splitlines():
                problems.setdefault(line, []).append(names[node_id])
            continue
        chosen.update((i.name, i) for i in checked)
        lines += [f"{names[node_id]}: {line}" if prefix else line for line in node_lines]
    if problems:
        raise PlanError(
            "\n".join(
                line if not prefix or len(where) == len(groups) else "\n".join(f"{name}: {line}" for name in where)
                for line, where in problems.items()
            )
        )
    return [chosen[i.name] for i in planned], lines


def _node_problems(
    config: Config,
    nodes: Sequence[NodeTopology],
    names: dict[str, str],
    assigned: dict[str, list[InstanceConfig]],
    cpu_head: NodeTopology | None,
) -> list[str]:
    """Nodes that would get replicas but cannot run them: the model folder is missing there (gpu-audit B6), or
    their NVIDIA driver is broken while the config asks for GPUs (W4). One line each, naming the node."""
    problems = []
    for node in nodes:
        name = names[node.node_id]
        serves = bool(assigned[node.node_id]) or node is cpu_head
        if serves and node.model_folder_present is False:
            problems.append(
                f"{name} (host {node.hostname}): the model folder does not exist there; replicas load it from the "
                "same path on every node: copy it there, or put it on a path every node shares"
            )
        if node.topology.gpu_error is not None and any(i.type != "cpu" for i in config.mig_instances):
            problems.append(f"{name} (host {node.hostname}): NVML failed there: {node.topology.gpu_error}")
    return problems


def plan_cluster(
    config: Config,
    nodes: Sequence[NodeTopology],
    footprint: Footprints = None,
    capabilities: Capabilities = BASE_INSTALL,
) -> Plan:
    """Place every configured instance on the nodes of a Ray cluster (``discover_nodes`` order: head first).

    ``capabilities`` are the planning process's (``capabilities.detect()``); a probed node's own packages
    (``NodeTopology.packages``) decide flash attention and accelerate for its instances (``Capabilities.on_node``).

    A node that would get replicas but lacks the model folder (``NodeTopology.model_folder_present`` False), or whose
    driver is broken while the config asks for GPUs, is refused by name. Every instance carries its node's
    ``node_id`` and ``node_ip``; ``gpu.gpu_index`` counts on that node. Notes are
    prefixed with the node's name. Raises PlanError, one line per problem naming the nodes (what profiles and free
    slices each has, how to create a slice and where), when the config cannot be placed.
    """
    if not nodes:
        raise PlanError("no node of the Ray cluster could be probed: nothing to place instances on")
    names = node_names(nodes)
    head = next((n for n in nodes if n.is_head), None)
    if not any(n.topology.gpus for n in nodes):
        return _cpu_only_cluster(config, nodes, head, names, footprint, capabilities)

    assigner = _Assigner(config, nodes, names)
    assigned: dict[str, list[InstanceConfig]] = {n.node_id: [] for n in nodes}
    problems: list[str] = []
    cpu_instances = [i for i in config.mig_instances if i.type == "cpu"]
    for instance in (i for i in config.mig_instances if i.type != "cpu"):
        if instance.type == "auto":  # sizing a slice per node's free set is not done across nodes yet
            problems.append(f"instance {instance.name!r}: type auto picks a slice on one machine only: name a profile")
            continue
        node_id, problem = assigner.assign(instance)
        if node_id is not None:
            assigned[node_id].append(instance)
        else:
            problems.append(problem or f"instance {instance.name!r} could not be placed")
    if cpu_instances and head is None:
        who = ", ".join(repr(i.name) for i in cpu_instances)
        problems.append(f"instances {who}: CPU pools run on the head node, which could not be probed")

    problems += _node_problems(config, nodes, names, assigned, head if cpu_instances else None)

    planned: list[PlannedInstance] = []
    notes: list[str] = []
    for node in nodes:
        name = names[node.node_id]
        on_node: list[PlannedInstance] = []
        if node.topology.gpus:
            try:
                on_node, gpu_notes = plan_gpu_instances(config, node.topology, assigned[node.node_id], footprint)
            except PlanError as error:
                problems += [f"{name}: {line}" for line in error.message.splitlines()]
                continue
            notes += [f"{name}: {note}" for note in gpu_notes]
        elif not (node is head and cpu_instances):
            notes.append(f"{name}: no GPU, no instance placed there")
        if node is head and cpu_instances:
            cpu_planned, cpu_notes = plan_cpu_pools(config, node.topology, cpu_instances)
            on_node += cpu_planned
            notes += [f"{name}: {note}" for note in cpu_notes]
        planned += [_on_node(p, node) for p in on_node]
    if problems:
        raise PlanError("\n".join(problems))
    planned = [dataclasses.replace(p, rank=rank) for rank, p in enumerate(planned)]
    planned, lines = _check_engine_per_node(config, planned, nodes, names, footprint, capabilities)
    kinds = sorted({p.device for p in planned}, key=["mig", "gpu", "cpu"].index)
    return Plan(instances=tuple(planned), device_kind="+".join(kinds), notes=tuple(notes), backend_lines=tuple(lines))
