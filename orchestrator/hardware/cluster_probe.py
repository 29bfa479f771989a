"""Discover the hardware of every node of a Ray cluster: one probe task per node, pinned to that node.

Used when ``ray.address`` joins an existing cluster: the planner then places each instance on the node holding its
slice. Ray is imported only inside ``discover_nodes``; the rest (ordering, naming, the CLI summary) is pure and unit
tested with node records shaped like ``ray.nodes()``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.capabilities import NODE_PACKAGES, installed
from orchestrator.hardware.topology import GpuInfo, MigSlice, Topology

# Ray gives the head node (and only it) this resource; the autoscaler, Ray Train and Ray Data recognise the head by
# it (``ray._common.constants.HEAD_NODE_RESOURCE_NAME`` in Ray 2.60). ``ray.nodes()`` has no head flag of its own.
HEAD_NODE_RESOURCE = "node:__internal_head__"
# Every node carries this label with its hex node id; unlike ``node:<ip>`` it stays unambiguous when several raylets
# share one IP (a test cluster on one machine).
NODE_ID_LABEL = "ray.io/node-id"


@dataclass(frozen=True)
class NodeTopology:
    """The hardware found on one Ray node.

    Attributes:
        node_id: Ray's hex node id (what ``NodeAffinitySchedulingStrategy`` and the ``ray.io/node-id`` label take).
        node_ip: the node's IP as Ray reports it (``node:<ip>`` is a resource of that node).
        hostname: ``socket.gethostname()`` on the node.
        is_head: True for the head node of the cluster.
        topology: what ``probe_topology`` found there.
        packages: which of ``capabilities.NODE_PACKAGES`` import on the node, as names (None: not looked up; the
            planner then assumes the planning process's own environment); ``Capabilities.on_node`` reads them.
        model_folder_present: whether the model folder the replicas will load exists on this node (None: not
            checked). Replicas receive the head's path as is (gpu-audit B6), so a node without it cannot serve.
    """

    node_id: str
    node_ip: str
    hostname: str
    is_head: bool
    topology: Topology
    packages: frozenset[str] | None = None
    model_folder_present: bool | None = None


@dataclass(frozen=True)
class NodeRecord:
    """An alive node as ``ray.nodes()`` lists it, before its hardware is probed."""

    node_id: str
    node_ip: str
    is_head: bool


def node_ip_resource(node_ip: str) -> str:
    """The resource every node has once, ``node:<ip>`` (amount 1.0): an actor asking for a tiny share of it
    (``{"resources": {node_ip_resource(ip): 0.001}}``) is placed on a node with that IP."""
    return f"node:{node_ip}"


def _ip_key(ip: str) -> tuple[int, int, str]:
    """Numeric IP order (10.0.0.9 before 10.0.0.10); an unparsable address sorts last, by text."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return (99, 0, ip)
    return (address.version, int(address), ip)


def alive_nodes(raw_nodes: Sequence[Mapping[str, Any]]) -> tuple[NodeRecord, ...]:
    """The alive nodes of ``ray.nodes()``: the head first, then by IP, then by node id (several raylets may share
    one IP). Dead nodes stay in Ray's table for a while; they are dropped here."""
    records = [
        NodeRecord(
            node_id=str(raw["NodeID"]),
            node_ip=str(raw.get("NodeManagerAddress", "")),
            is_head=HEAD_NODE_RESOURCE in (raw.get("Resources") or {}),
        )
        for raw in raw_nodes
        if raw.get("Alive", raw.get("alive", False))
    ]
    return tuple(sorted(records, key=lambda r: (not r.is_head, _ip_key(r.node_ip), r.node_id)))


def node_names(nodes: Sequence[NodeTopology | NodeRecord]) -> dict[str, str]:
    """A short name per node id for messages: ``node 10.0.0.2``, with the id's first 8 characters added when
    another node shares the IP."""
    ips = [n.node_ip for n in nodes]
    return {n.node_id: f"node {n.node_ip}" + (f" ({n.node_id[:8]})" if ips.count(n.node_ip) > 1 else "") for n in nodes}


def slice_counts(slices: Sequence[MigSlice]) -> str:
    """``3g.40gb, 1g.10gb x2``: the slices' profiles in order of first appearance, with counts (``none`` if empty)."""
    counts = Counter(s.profile for s in slices)
    return ", ".join(name if n == 1 else f"{name} x{n}" for name, n in counts.items()) or "none"


def _gpu_state(gpu: GpuInfo) -> str:
    if gpu.mig_reset_pending:
        return "MIG mode change waits for a GPU reset"
    if gpu.mig_enabled:
        return f"MIG {slice_counts(gpu.slices)}"
    return "whole GPU"


def describe_node(node: NodeTopology, name: str | None = None) -> str:
    """One line per node for the CLI, e.g. ``node 10.0.0.1 (head, host gpu-a): 16 cores; GPU 0 NVIDIA
    A100-SXM4-80GB: MIG 3g.40gb, 1g.10gb x2``. ``name`` is the node's entry of ``node_names`` (default
    ``node <ip>``). A node without GPU says why, from its probe's ``gpu_note``."""
    topology = node.topology
    role = "head, " if node.is_head else ""
    gpus = "; ".join(f"GPU {g.index} {g.name}: {_gpu_state(g)}" for g in topology.gpus)
    if not gpus:
        # The probe's note ends "serving on CPU pools", true only of the head: keep just its reason.
        reason = (topology.gpu_note or "").removeprefix("No GPU found: ").removesuffix("; serving on CPU pools.")
        gpus = f"no GPU ({reason})" if reason else "no GPU"
    return f"{name or f'node {node.node_ip}'} ({role}host {node.hostname}): {len(topology.cpu.cores)} cores; {gpus}"


def _one_line(error: BaseException) -> str:
    """``Type: first line`` of the error the probe raised, never a traceback."""
    cause = getattr(error, "cause", None)  # a RayTaskError carries the probe's own exception
    if isinstance(cause, BaseException):
        error = cause
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def installed_optional_packages() -> frozenset[str]:
    """What this node reports of its optional packages: the ``capabilities.NODE_PACKAGES`` that import here.

    Names rather than a ``Capabilities`` cross the wire: plain strings unpickle on a driver of any version.
    """
    return installed(NODE_PACKAGES)


def _probe_on_node(
    probe: Callable[[], Topology] | None, model_folder: str | None = None
) -> tuple[Topology, str, frozenset[str], bool | None]:
    """The body of the per-node task: the node's topology, hostname, optional packages and whether
    ``model_folder`` is a directory there (None when no folder was given)."""
    if probe is None:
        from orchestrator.hardware.probe import probe_topology

        probe = probe_topology
    present = Path(model_folder).is_dir() if model_folder is not None else None
    return probe(), socket.gethostname(), installed_optional_packages(), present


def discover_nodes(
    probe: Callable[[], Topology] | None = None, timeout_s: float = 60.0, model_folder: str | None = None
) -> tuple[tuple[NodeTopology, ...], tuple[str, ...]]:
    """Probe every alive node of the Ray cluster this process is connected to (``ray.init`` already done).

    One task per node, pinned with a hard ``NodeAffinitySchedulingStrategy`` and asking for no CPU (so that it runs
    on a head started with ``--num-cpus=0`` and beside busy replicas), calls ``probe`` there (default:
    ``probe_topology``, imported on the node), looks up the node's optional packages and, given ``model_folder``
    (the resolved folder the replicas will load), whether it exists there. Returns the nodes, head
    first then by IP, and one warning line per node skipped because its task failed or did not finish within
    ``timeout_s`` (counted for all tasks together).
    Raises only what ``ray.nodes()`` raises (Ray not initialised...).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    records = alive_nodes(ray.nodes())
    names = node_names(records)
    task = ray.remote(num_cpus=0, max_retries=0)(_probe_on_node)
    refs = [
        task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=r.node_id, soft=False)).remote(
            probe, model_folder
        )
        for r in records
    ]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s) if refs else ([], [])
    finished = set(ready)
    nodes: list[NodeTopology] = []
    warnings: list[str] = []
    for record, ref in zip(records, refs, strict=True):
        where = f"{names[record.node_id]}: hardware probe"
        if ref not in finished:
            warnings.append(f"{where} did not answer within {timeout_s:g} s; node skipped")
            # A probe stuck in the NVIDIA driver would hold its worker forever; the node is skipped either way.
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
            continue
        try:
            topology, hostname, packages, folder_present = ray.get(ref)
        except Exception as error:  # noqa: BLE001 - any failure skips the node with one line
            warnings.append(f"{where} failed ({_one_line(error)}); node skipped")
            continue
        if not isinstance(topology, Topology):
            warnings.append(f"{where} returned {type(topology).__name__}, not a Topology; node skipped")
            continue
        node = NodeTopology(
            record.node_id, record.node_ip, str(hostname), record.is_head, topology, packages, folder_present
        )
        nodes.append(node)
    return tuple(nodes), tuple(warnings)
