"""A real Ray counts MIG slices as resources: what one job holds, a second cannot book (issue 16, W3).

Runs in its own Python process: it starts its own Ray, offering two 1g.10gb slices, beside the session's Ray.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent(
    """
    import time

    import ray

    from orchestrator.contracts.plan import GpuBinding, Plan, PlannedInstance
    from orchestrator.serving.deploy import claim_shortfalls
    from orchestrator.serving.slice_claims import claim_of, offer_of_plan


    def slice_instance(rank):
        binding = GpuBinding("mig", f"MIG-{rank}", 0, "GPU-0", "A100", "1g.10gb", 9_728, 14, rank + 7, 0)
        return PlannedInstance(rank, f"s{rank}", "1g.10gb", "mig", (0,), 1, 8, 1, 4096, 2.0, 64, 7, gpu=binding)


    plan = Plan(instances=(slice_instance(0), slice_instance(1)), device_kind="mig")
    offer = offer_of_plan(plan.instances).ray_init_kwargs()
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", **offer)
    print("before:", claim_shortfalls(plan))


    @ray.remote(num_cpus=0, **claim_of(plan.instances[0]).ray_options())
    class OtherJob:
        def ping(self):
            return "holding"


    holder = OtherJob.remote()
    print("other job:", ray.get(holder.ping.remote()))
    third = OtherJob.remote()
    ready, _ = ray.wait([third.ping.remote()], timeout=3)
    print("booking the second slice starts:", bool(ready))
    fourth = OtherJob.remote()
    ready, _ = ray.wait([fourth.ping.remote()], timeout=3)
    print("booking a third slice of two starts:", bool(ready))
    deadline = time.monotonic() + 20
    while True:  # the raylet reports what is free to the GCS every few hundred ms
        problems = claim_shortfalls(plan)
        if problems or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    print("after:", problems)
    ray.shutdown()
    """
)


def test_a_slice_held_by_another_job_is_named_before_deploying() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "before: []" in lines  # the embedded Ray offers exactly the plan's slices
    assert "other job: holding" in lines
    # The other job's second actor takes the second slice, and a third stays pending: no slice is booked twice.
    assert "booking the second slice starts: True" in lines
    assert "booking a third slice of two starts: False" in lines
    # Our plan now finds both taken and says so before deploying, rather than waiting for its replicas forever.
    after = next(line for line in lines if line.startswith("after:"))
    assert "2 of the 2 mig_1g.10gb planned there are taken by another service or Ray job" in after
