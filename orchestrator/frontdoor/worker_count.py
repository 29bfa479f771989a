"""How many front-door processes a plan needs: ``server.front_door_workers`` as given, or sized for ``auto``.

``auto`` compares what the planned GPU instances can serve with what one front-door process carries. On CPU pools
the replicas themselves use the cores and serve far less than one front door carries, so ``auto`` is 1 there. On
GPUs the demand is estimated from each instance's SMs, at ``REQUESTS_PER_SM_S`` requests/s per SM (the advisor's
assumed small-encoder rates: 170 requests of 16 texts/s on an H100 1g.10gb of 16 SMs, docs/advisor.md), against
``REQUESTS_PER_WORKER_S`` per front-door process (docs/benchmarks.md, "Ingress alone": 0.30-0.36 ms of front-door
CPU per request of 16 texts on direct lanes, about 3,000 requests/s per core; counted at two thirds of that, for
slower cores and the headroom a p99 needs). Workers are capped by the cores left after one per GPU replica (which
tokenises on the CPU) and by ``MAX_AUTO_WORKERS``. Both rates are assumptions until measured on the machine: set a
number to override.
"""

from __future__ import annotations

import math
import os

from orchestrator.contracts.plan import Plan

REQUESTS_PER_SM_S = 10.0
REQUESTS_PER_WORKER_S = 2000.0
MAX_AUTO_WORKERS = 8


def front_door_workers(setting: int | str, plan: Plan, transport: str, cores: int | None = None) -> int:
    """The number of front-door processes for ``plan`` on this machine (1 with ``transport: serve``)."""
    if setting != "auto":
        return int(setting)
    if transport != "direct":
        return 1
    local_gpu = [i for i in plan.instances if i.gpu is not None and i.node_id is None]
    all_gpu = [i for i in plan.instances if i.gpu is not None]
    if not all_gpu:
        return 1
    # In a cluster this machine's front door is the one endpoint of every node's instances.
    demand = sum(i.gpu.sm_count for i in all_gpu if i.gpu is not None) * REQUESTS_PER_SM_S
    wanted = math.ceil(demand / REQUESTS_PER_WORKER_S)
    cores = cores if cores is not None else len(os.sched_getaffinity(0))
    spare = max(cores - len(local_gpu), 1)
    return max(1, min(wanted, spare, MAX_AUTO_WORKERS))
