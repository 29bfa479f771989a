"""Pure placement: (config, topology) -> plan of instances.

No I/O and no heavy imports: the same function runs under ``orchestrator plan`` (validate and print), under
``orchestrator up`` (then deploy), and in unit tests with hand-made topologies. Each planned instance carries
everything its replica needs to pin itself and size its batcher, so the replica never re-reads the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.config import Config
from orchestrator.errors import PlanError
from orchestrator.hardware.topology import Topology

# Requests one compute thread is sized to hold at once. The balancer divides outstanding requests by this
# capacity, and it sets how many requests Serve lets a replica hold; each replica's bounded text queue still
# refuses work beyond ``batching.max_queued_texts`` with 429.
REQUESTS_PER_THREAD = 8


@dataclass(frozen=True)
class PlannedInstance:
    """One replica: where it runs and how it batches.

    Attributes:
        rank: position in the plan; the Serve replica with this rank takes this instance.
        name: the configured instance name.
        profile: the configured ``type`` (a MIG profile name, or ``cpu``).
        device: ``cpu`` (later: a MIG slice or a whole GPU).
        cpu_cores: the cores its process is pinned to.
        threads: compute threads (torch intra-op threads on CPU).
        capacity: requests it is sized to hold at once (the balancer's queue normaliser).
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


@dataclass(frozen=True)
class Plan:
    """The placement of every instance, and what could not be placed."""

    instances: tuple[PlannedInstance, ...]
    device_kind: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    def instance_for_rank(self, rank: int) -> PlannedInstance:
        """The instance a replica of the given rank serves; raises PlanError for an unknown rank."""
        if not 0 <= rank < len(self.instances):
            raise PlanError(f"replica rank {rank} has no planned instance (plan has {len(self.instances)})")
        return self.instances[rank]


def _cpu_pool_shape(config: Config, num_cores: int) -> tuple[int, int]:
    """(pool count, threads per pool) from the config, deriving 'auto' values from the cores."""
    pools = config.cpu_pools
    wanted = len(config.mig_instances)
    if pools.count == "auto" and pools.threads_per_pool == "auto":
        count = max(1, min(wanted, num_cores))
        return count, max(1, num_cores // count)
    if pools.count == "auto":
        assert isinstance(pools.threads_per_pool, int)
        threads = pools.threads_per_pool
        return max(1, min(wanted, num_cores // threads)), threads
    if pools.threads_per_pool == "auto":
        return pools.count, max(1, num_cores // pools.count)
    return pools.count, pools.threads_per_pool


def plan_cpu_pools(config: Config, topology: Topology) -> Plan:
    """Map the configured instances, in order, onto CPU pools of consecutive cores.

    Instance i takes pool i; instances beyond the pool count are not placed and a note says how to place them.
    Raises PlanError when the config leaves no instance placed.
    """
    cores = topology.cpu.cores
    count, threads = _cpu_pool_shape(config, len(cores))
    notes: list[str] = []
    if count * threads > len(cores):
        notes.append(f"{count} pools x {threads} threads oversubscribe the {len(cores)} cores: expect slower answers")
    batching = config.batching
    instances = []
    for rank, instance in enumerate(config.mig_instances[:count]):
        first = rank * threads
        pool_cores = tuple(cores[(first + offset) % len(cores)] for offset in range(threads))
        instances.append(
            PlannedInstance(
                rank=rank,
                name=instance.name,
                profile=instance.type,
                device="cpu",
                cpu_cores=pool_cores,
                threads=threads,
                batch_size=instance.batch_size,
                max_concurrency=instance.max_concurrency,
                max_batch_tokens=batching.max_batch_tokens,
                max_wait_ms=batching.max_wait_ms,
                max_queued_texts=batching.max_queued_texts,
                capacity=REQUESTS_PER_THREAD * threads,
                batch_overhead_tokens=None
                if batching.batch_overhead_tokens == "auto"
                else float(batching.batch_overhead_tokens),
            )
        )
    for instance in config.mig_instances[count:]:
        notes.append(
            f"instance {instance.name!r} not placed: {count} CPU pool(s) of {threads} thread(s) fill the "
            f"{len(cores)} cores (set cpu_pools.count: {len(config.mig_instances)} to place every instance)"
        )
    if count > len(config.mig_instances):
        notes.append(f"{count - len(config.mig_instances)} CPU pool(s) unused: no instance left to place on them")
    if not instances:
        raise PlanError("no instance could be placed on the CPU pools")
    return Plan(instances=tuple(instances), device_kind="cpu", notes=tuple(notes))


def plan(config: Config, topology: Topology) -> Plan:
    """Place every configured instance on the hardware found.

    This version places on CPU pools; MIG slices and whole GPUs plug in here. Raises PlanError with a one-line
    message when the config cannot be placed.
    """
    return plan_cpu_pools(config, topology)
