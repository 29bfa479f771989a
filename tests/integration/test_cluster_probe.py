"""``discover_nodes`` on a real 2-node Ray cluster started on this machine with ``ray.cluster_utils.Cluster``.

The cluster lives in a subprocess (this file run as a script), for two reasons: a process can join one Ray cluster
only, and the session's Ray of the other integration tests (``conftest.served``) may already be initialised here;
and ``Cluster`` writes the "current cluster" address file that an address-less ``ray.init`` joins, so the
subprocess gets its own ``RAY_TMPDIR`` and no other Ray on this machine can see that file.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from orchestrator.hardware.cluster_probe import installed_optional_packages
from orchestrator.hardware.topology import CpuTopology, Topology

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


def probe_reporting_its_node(fail_unless_on: str | None = None, sleep_unless_on: str | None = None) -> Topology:
    """A probe whose Topology names the node it ran on (in ``warnings``), so the test sees where each task ran.

    With ``fail_unless_on`` / ``sleep_unless_on`` set to a node id, it raises / hangs on every other node.
    """
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    if fail_unless_on is not None and node_id != fail_unless_on:
        raise RuntimeError(f"no driver on {node_id[:8]}\n  (second line that must not reach the warning)")
    if sleep_unless_on is not None and node_id != sleep_unless_on:
        time.sleep(60)
    return Topology(cpu=CpuTopology(cores=(0,)), warnings=(f"probed on {node_id}",))


def run_cluster(result_path: str) -> None:
    """Start a head and a worker node, run three discoveries, serve across both, shut everything down, write what
    was seen as JSON."""
    from orchestrator.serving.deploy import SERVE_ENV

    os.environ.update(SERVE_ENV)  # as `orchestrator up` runs: set before Serve is imported
    import ray
    from ray.cluster_utils import Cluster

    from orchestrator.hardware.cluster_probe import discover_nodes

    small = {"num_cpus": 1, "object_store_memory": 128 * MIB}
    cluster = Cluster(initialize_head=True, head_node_args={**small, "include_dashboard": False})
    result: dict[str, object] = {}
    try:
        worker = cluster.add_node(**small)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        head_id = cluster.head_node.node_id
        result["head_id"], result["worker_id"] = head_id, worker.node_id
        calls = {
            "plain": (probe_reporting_its_node, 60.0),
            "failing": (functools.partial(probe_reporting_its_node, fail_unless_on=head_id), 60.0),
            "silent": (functools.partial(probe_reporting_its_node, sleep_unless_on=head_id), 3.0),
        }
        for name, (probe, timeout_s) in calls.items():
            nodes, warnings = discover_nodes(probe, timeout_s=timeout_s)
            result[name] = {
                "nodes": [
                    [n.node_id, n.node_ip, n.hostname, n.is_head, list(n.topology.warnings), sorted(n.packages or ())]
                    for n in nodes
                ],
                "warnings": list(warnings),
            }
        result["serving"] = {
            transport: serve_across(cluster.head_node, worker, transport) for transport in ("direct", "serve")
        }
    finally:
        ray.shutdown()
        cluster.shutdown()
    result["ray_initialized_after"] = ray.is_initialized()
    Path(result_path).write_text(json.dumps(result))


def serve_across(head: object, worker: object, transport: str) -> dict[str, object]:
    """Deploy two CPU pools, one per node (as a cluster plan places GPU slices), behind one front door reaching them
    by ``transport``; send requests; return which instance answered them and on which node each instance's replica
    runs."""
    import asyncio
    import dataclasses

    import aiohttp
    import ray

    from orchestrator.frontdoor.server import front_door_server_for
    from orchestrator.hardware.topology import CpuTopology, Topology
    from orchestrator.planning.planner import Plan, plan
    from orchestrator.serving import deploy
    from tests.integration.conftest import free_port, make_loaded

    port, node_port = free_port(), free_port()
    # Both nodes of this test share one machine: the worker node's front door needs a port of its own.
    server = {"port": port, "node_port": node_port, "transport": transport, "max_inputs_per_request": 64}
    loaded = make_loaded(port, server=server)
    local = plan(loaded.config, Topology(cpu=CpuTopology(cores=(0, 1))), loaded.footprint)
    nodes = (head, worker)
    instances = tuple(
        dataclasses.replace(instance, node_id=node.node_id, node_ip=node.node_ip_address)  # type: ignore[attr-defined]
        for instance, node in zip(local.instances, nodes, strict=True)
    )
    placement = Plan(instances=instances, device_kind="cpu", backend_lines=local.backend_lines)
    front = front_door_server_for(loaded)
    front.start()
    try:
        deploy.start_ray(loaded)  # joins the cluster this process is connected to; starts Serve there
        tuning = deploy.ServeTuning(graceful_shutdown_timeout_s=1.0)
        lane_token = deploy.deploy(loaded, placement, tuning, timeout_s=120)
        deploy.attach_front_door(front, loaded, placement, lane_token)

        async def requests(port: int) -> list[tuple[int, str, int]]:
            url = f"http://127.0.0.1:{port}/v1/embeddings"
            async with aiohttp.ClientSession() as session:

                async def one(n: int) -> tuple[int, str, int]:
                    async with session.post(url, json={"input": [f"text number {n}"] * 8}) as response:
                        body = await response.json()
                        return response.status, response.headers.get("x-instance", ""), len(body.get("data", []))

                return await asyncio.gather(*(one(n) for n in range(24)))

        answers = asyncio.run(requests(port))
        # With direct lanes the worker node serves the endpoint too, reaching the instances of both nodes.
        node_answers = asyncio.run(requests(node_port)) if transport == "direct" else []
        health = json.loads(
            __import__("urllib.request").request.urlopen(f"http://127.0.0.1:{loaded.config.server.port}/health").read()
        )
        replica_nodes = {}
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if "EmbeddingReplica" in entry["name"]:
                actor = ray.get_actor(entry["name"], namespace=entry["namespace"])
                where = ray.get(actor.__ray_call__.remote(lambda _self: ray.get_runtime_context().get_node_id()))
                replica_nodes[entry["name"]] = where
    finally:
        front.stop()
    return {
        "answers": answers,
        "node_answers": node_answers,
        "health": health,
        "replica_nodes": replica_nodes,
        "planned": {i.name: i.node_id for i in placement.instances},
    }


def test_discover_nodes_on_a_two_node_cluster(tmp_path: Path) -> None:
    ray_tmp = tempfile.mkdtemp(prefix="rcp-", dir="/tmp")  # short: Ray's socket paths live under it
    result_path = tmp_path / "result.json"
    # As the README has operators run a cluster: Ray's token auth on, one token shared by every node (here through
    # the environment, which `Cluster`'s nodes inherit), and no single-machine switch left by this process's Ray.
    unwanted = ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_TOKEN_PATH")
    env = {k: v for k, v in os.environ.items() if k not in unwanted}
    env.update(RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, __file__, str(result_path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so a timeout can stop the Ray processes it started
    )
    try:
        output, _ = process.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the 2-node cluster did not finish within 150 s:\n{output[-3000:]}")
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert process.returncode == 0, output[-3000:]
    elapsed_s = time.monotonic() - started
    result = json.loads(result_path.read_text())
    head_id, worker_id = result["head_id"], result["worker_id"]
    host = socket.gethostname()

    plain = result["plain"]
    assert plain["warnings"] == []
    assert [(n[0], n[2], n[3]) for n in plain["nodes"]] == [(head_id, host, True), (worker_id, host, False)]
    # Each node's probe ran on that node: the Topology it returned names the node it was computed on.
    assert [n[4] for n in plain["nodes"]] == [[f"probed on {head_id}"], [f"probed on {worker_id}"]]
    # ... and looked up there which optional GPU packages import (both nodes share this environment).
    assert [n[5] for n in plain["nodes"]] == [sorted(installed_optional_packages())] * 2

    worker_name = f"node {plain['nodes'][1][1]} ({worker_id[:8]})"  # both nodes share one IP: the id tells them apart
    failing = result["failing"]
    assert [n[0] for n in failing["nodes"]] == [head_id]
    assert failing["warnings"] == [
        f"{worker_name}: hardware probe failed (RuntimeError: no driver on {worker_id[:8]}); node skipped"
    ]
    silent = result["silent"]
    assert [n[0] for n in silent["nodes"]] == [head_id]
    assert silent["warnings"] == [f"{worker_name}: hardware probe did not answer within 3 s; node skipped"]
    assert result["ray_initialized_after"] is False

    # Serving across the two nodes: one Serve application per node, each replica on its planned node, one endpoint,
    # through direct lanes and through Serve's handles.
    for serving in result["serving"].values():
        assert sorted(serving["replica_nodes"].values()) == sorted([head_id, worker_id])
        assert {status for status, _, _ in serving["answers"]} == {200}
        assert all(count == 8 for _, _, count in serving["answers"])
        assert {instance for _, instance, _ in serving["answers"]} == set(serving["planned"])  # both nodes served
        assert (serving["health"]["instances_ready"], serving["health"]["instances_planned"]) == (2, 2)
    node_answers = result["serving"]["direct"]["node_answers"]
    assert {status for status, _, _ in node_answers} == {200} and len(node_answers) == 24
    assert {instance for _, instance, _ in node_answers} == set(result["serving"]["direct"]["planned"])
    assert result["serving"]["serve"]["node_answers"] == []  # Serve handles: the head's front door only
    print(f"2-node cluster discovery and serving took {elapsed_s:.1f} s")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # run as a script: make ``tests`` importable
    run_cluster(sys.argv[1])
