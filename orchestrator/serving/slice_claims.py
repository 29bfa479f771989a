"""The Ray resources a replica claims for its device, the ones a node offers, and what is short before deploying.

Ray counts physical GPUs (``GPU``) and knows nothing of MIG, so a MIG slice is a custom resource per profile
(``mig_1g.10gb``): a node offers one unit per free slice of that profile and each replica on a slice claims one, so a
second service or another Ray job on the same cluster cannot book a slice twice (Ray keeps the claim pending
instead). A replica on whole GPUs claims ``num_gpus``; a CPU-pool replica claims nothing (its cores are pinned by
affinity). Which slice a replica takes is still the plan's (its MIG UUID): the claim only keeps the count honest.

Serve gives every replica of a deployment the same Ray options, so instances are deployed in groups of one claim
(``claim_of(...).key``): one Serve deployment per node, model and claim.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from orchestrator.contracts.plan import PlannedInstance
from orchestrator.hardware.topology import Topology

MIG_RESOURCE_PREFIX = "mig_"
GPU_RESOURCE = "GPU"  # Ray's own name for what ``num_gpus`` counts


def mig_resource(profile: str) -> str:
    """The Ray resource of one MIG slice of ``profile`` (``1g.10gb`` -> ``mig_1g.10gb``)."""
    return MIG_RESOURCE_PREFIX + profile


@dataclass(frozen=True)
class Claim:
    """What one replica asks Ray for, besides its node.

    Attributes:
        key: the deployment group (a MIG profile, ``gpu`` or ``gpux<N>`` for N whole GPUs, None for a CPU pool).
        num_gpus: whole GPUs (Ray's ``GPU`` resource).
        resource: the custom resource of its MIG slice (one unit), or None.
    """

    key: str | None
    num_gpus: int = 0
    resource: str | None = None

    def ray_options(self) -> dict[str, object]:
        """The claim as ``ray_actor_options`` entries."""
        options: dict[str, object] = {}
        if self.num_gpus:
            options["num_gpus"] = self.num_gpus
        if self.resource is not None:
            options["resources"] = {self.resource: 1}
        return options

    def amounts(self) -> dict[str, int]:
        """Resource name -> units claimed (empty for a CPU pool)."""
        amounts = {GPU_RESOURCE: self.num_gpus} if self.num_gpus else {}
        if self.resource is not None:
            amounts[self.resource] = 1
        return amounts


def claim_of(instance: PlannedInstance) -> Claim:
    """The claim of one planned instance."""
    if instance.gpu is None:
        return Claim(None)
    if instance.gpu.kind == "mig":
        return Claim(instance.gpu.profile, resource=mig_resource(instance.gpu.profile))
    count = instance.gpu.device_count
    return Claim("gpu" if count == 1 else f"gpux{count}", num_gpus=count)


def needed(instances: Iterable[PlannedInstance]) -> Counter[str]:
    """Resource name -> units the instances claim together."""
    total: Counter[str] = Counter()
    for instance in instances:
        total.update(claim_of(instance).amounts())
    return total


@dataclass(frozen=True)
class NodeOffer:
    """What a node tells Ray it has: whole GPUs (MIG off) and free MIG slices by resource name."""

    num_gpus: int
    slices: Mapping[str, int]

    def ray_init_kwargs(self) -> dict[str, object]:
        """``ray.init`` arguments of an embedded head offering this."""
        return {"num_gpus": self.num_gpus, "resources": dict(self.slices)}

    def ray_start_args(self, leave_out: Collection[str] = ()) -> list[str]:
        """``ray start`` options offering this, without the options in ``leave_out`` (the operator set them)."""
        args = [] if "--num-gpus" in leave_out else ["--num-gpus", str(self.num_gpus)]
        if self.slices and "--resources" not in leave_out:
            args += ["--resources", json.dumps(dict(sorted(self.slices.items())), separators=(",", ":"))]
        return args

    def describe(self) -> str:
        """One line for the operator: ``GPU 1, mig_1g.10gb 3``."""
        parts = [f"{GPU_RESOURCE} {self.num_gpus}"] + [f"{name} {count}" for name, count in sorted(self.slices.items())]
        return ", ".join(parts)


def offer_of_topology(topology: Topology) -> NodeOffer:
    """What this node offers: each GPU with MIG off as a whole GPU, each free MIG slice under its profile (a slice
    another process uses is not offered: nothing of ours may be placed there)."""
    whole = sum(1 for gpu in topology.gpus if not gpu.mig_enabled)
    slices: Counter[str] = Counter(
        mig_resource(slice_.profile)
        for gpu in topology.gpus
        if gpu.mig_enabled
        for slice_ in gpu.slices
        if slice_.busy_reason is None
    )
    return NodeOffer(whole, dict(slices))


def offer_of_plan(instances: Sequence[PlannedInstance]) -> NodeOffer:
    """Exactly what the instances claim: an embedded Ray exists for one service, so it offers its plan."""
    amounts = needed(instances)
    gpus = amounts.pop(GPU_RESOURCE, 0)
    return NodeOffer(gpus, dict(amounts))


def shortfalls(
    wanted_by_node: Mapping[str, Counter[str]],
    total_by_node: Mapping[str, Mapping[str, float]],
    free_by_node: Mapping[str, Mapping[str, float]],
    node_names: Mapping[str, str],
) -> list[str]:
    """One line per resource a node lacks for its replicas: not offered at all (the node was not started by
    ``orchestrator worker``), or taken by another service or Ray job. Empty when every claim can be met."""
    problems = []
    for node_id, wanted in wanted_by_node.items():
        name = node_names.get(node_id, node_id[:8])
        total = total_by_node.get(node_id, {})
        free = free_by_node.get(node_id, {})
        for resource, count in sorted(wanted.items()):
            offered = int(total.get(resource, 0))
            available = int(free.get(resource, 0))
            if offered < count:
                problems.append(
                    f"node {name} offers Ray {offered} {resource} and {count} are planned there: start that node "
                    "with `orchestrator worker` (`--head` for the head): it offers its GPUs and MIG slices to Ray"
                )
            elif available < count:
                problems.append(
                    f"node {name}: {count - available} of the {count} {resource} planned there are taken by another "
                    "service or Ray job: stop it, or plan fewer instances there"
                )
    return problems
