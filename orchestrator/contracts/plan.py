"""The plan as it travels: what the planner decides and every replica receives in its spec (pickled by Ray).

Plain frozen dataclasses, no planning logic (``orchestrator/planning/planner.py`` makes them): a replica reads its
instance from here (its rank, cores, threads, batch limits, GPU binding, backend) and never re-reads the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.contracts.errors import PlanError


@dataclass(frozen=True)
class GpuBinding:
    """The GPU devices a replica is pinned to: a MIG slice, a whole GPU, or several whole GPUs of one machine.

    Attributes:
        kind: ``mig`` or ``gpu``.
        device_uuid: the first (or only) device (``MIG-...`` or ``GPU-...``); the model's embeddings live there.
        gpu_index / gpu_uuid / gpu_name: the first physical GPU (dcgm-exporter's ``gpu`` and ``UUID`` labels).
        gpu_instance_id / compute_instance_id: the MIG ids (None for a whole GPU); ``GPU_I_ID`` in DCGM.
        sm_count / memory_mb: what the devices offer together.
        device_uuids: every device, in CUDA order, first = ``device_uuid``; ``CUDA_VISIBLE_DEVICES`` gets them
            comma-joined. Left empty, it is ``(device_uuid,)``.
        gpu_indices: the physical GPU of each device (NVML indices on its node); left empty, ``(gpu_index,)``.
    """

    kind: str
    device_uuid: str
    gpu_index: int
    gpu_uuid: str
    gpu_name: str
    profile: str
    memory_mb: int
    sm_count: int
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None
    device_uuids: tuple[str, ...] = ()
    gpu_indices: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # Single-device bindings (every MIG slice, most whole GPUs) name their device once; fill the tuples so that
        # readers never special-case them.
        if not self.device_uuids:
            object.__setattr__(self, "device_uuids", (self.device_uuid,))
        if not self.gpu_indices:
            object.__setattr__(self, "gpu_indices", (self.gpu_index,))
        if self.device_uuids[0] != self.device_uuid or len(self.gpu_indices) != len(self.device_uuids):
            raise ValueError(f"inconsistent GpuBinding: {self.device_uuids} / {self.gpu_indices} vs {self.device_uuid}")

    @property
    def device_count(self) -> int:
        """How many CUDA devices the replica sees (more than 1 only for ``gpus: N`` whole-GPU instances)."""
        return len(self.device_uuids)


@dataclass(frozen=True)
class PlannedInstance:
    """One replica: where it runs and how it batches.

    Attributes:
        rank: position in the plan; the Serve replica with this rank takes this instance.
        name: the configured instance name.
        profile: the configured ``type`` (a MIG profile name, or ``cpu``).
        device: ``cpu``, ``mig`` (a MIG slice) or ``gpu`` (a whole GPU).
        cpu_cores: the cores its process is pinned to.
        threads: compute threads (torch intra-op threads on CPU).
        capacity: requests it is sized to hold at once (the balancer's queue normaliser).
        gpu: the GPU device it is pinned to (None on CPU); ``gpu.gpu_index`` counts on its own node.
        node_id / node_ip: the Ray node it runs on (``ray.io/node-id`` label, ``node:<ip>`` resource); None for
            the local node, as every instance of a single-node ``plan()`` is.
        model: the served name of the model it serves ("" in a one-model plan made before the name was known).
    """

    rank: int
    name: str
    profile: str
    device: str
    cpu_cores: tuple[int, ...]
    threads: int
    batch_size: int
    max_concurrency: int
    max_batch_tokens: int
    max_wait_ms: float
    max_queued_texts: int
    capacity: int
    batch_overhead_tokens: float | None = None  # None: the replica measures it at start-up
    gpu: GpuBinding | None = None
    backend: str = "torch"
    node_id: str | None = None
    node_ip: str | None = None
    model: str = ""


@dataclass(frozen=True)
class Plan:
    """The placement of every instance, and what could not be placed.

    A cluster plan (``orchestrator/planning/cluster_planner.py``) lists the instances of each node together, nodes
    in their given order, so that one Serve deployment per node can hand its replica of rank r the r-th instance of
    its node.
    """

    instances: tuple[PlannedInstance, ...]
    device_kind: str
    notes: tuple[str, ...] = field(default_factory=tuple)
    backend_lines: tuple[str, ...] = field(default_factory=tuple)

    def instance_for_rank(self, rank: int) -> PlannedInstance:
        """The instance a replica of the given rank serves; raises PlanError for an unknown rank."""
        if not 0 <= rank < len(self.instances):
            raise PlanError(f"replica rank {rank} has no planned instance (plan has {len(self.instances)})")
        return self.instances[rank]

    def instances_on_node(self, node_id: str | None, model: str | None = None) -> tuple[PlannedInstance, ...]:
        """The instances placed on that node (None: the local node of a single-node plan), in rank order; with
        ``model``, only those serving it."""
        return tuple(i for i in self.instances if i.node_id == node_id and (model is None or i.model == model))

    def instance_for_node_rank(self, node_id: str | None, rank: int, model: str | None = None) -> PlannedInstance:
        """The instance the replica of the given rank in that node's deployment (of ``model``: one deployment per
        node and model) serves; raises PlanError for an unknown rank."""
        on_node = self.instances_on_node(node_id, model)
        if not 0 <= rank < len(on_node):
            which = f"node {node_id}" if model is None else f"node {node_id} for model {model!r}"
            raise PlanError(f"replica rank {rank} has no planned instance on {which} (there are {len(on_node)})")
        return on_node[rank]

    def models(self) -> tuple[str, ...]:
        """The models the plan serves, in order of their first instance."""
        return tuple(dict.fromkeys(i.model for i in self.instances))


def instances_by_node_and_model(plan: Plan) -> dict[tuple[str | None, str], tuple[PlannedInstance, ...]]:
    """The plan's instances grouped by (node, model): one Serve deployment each, in order of first instance."""
    groups: dict[tuple[str | None, str], list[PlannedInstance]] = {}
    for instance in plan.instances:
        groups.setdefault((instance.node_id, instance.model), []).append(instance)
    return {key: tuple(group) for key, group in groups.items()}


def instances_by_node(plan: Plan) -> dict[str | None, tuple[PlannedInstance, ...]]:
    """The plan's instances grouped by ``node_id``: nodes in order of their first instance, each group in rank
    order. A single-node plan gives one group, under None."""
    groups: dict[str | None, list[PlannedInstance]] = {}
    for instance in plan.instances:
        groups.setdefault(instance.node_id, []).append(instance)
    return {node_id: tuple(group) for node_id, group in groups.items()}
