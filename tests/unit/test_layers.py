"""The house's import rules, read from the source (AST), so that a new import across a boundary fails here first.

* Heavy packages (Ray, torch, NVML, transformers, ONNX, the HTTP servers) are imported at module level only by the
  modules that exist to use them; everywhere else they are imported inside the function that needs them, so that
  config, planning and the CLI load in milliseconds and test without a cluster.
* The control plane (``orchestrator``) reaches into the worker side (``workers``) only from its composition roots:
  ``deploy`` (the replica class it deploys), ``cli.serve`` (the ``export`` command) and ``steps`` (the export check).
* The worker side imports from ``orchestrator`` only ``orchestrator.contracts`` (what crosses the process boundary:
  errors, the forwarded request, the lane's frames, the plan, the metrics snapshot) and leaf modules (they import
  nothing of the project but contracts: ``capabilities``, ``metrics``, ``planning.engine_choice``,
  ``hardware.nvml_memory``), never a control-plane implementation.
* ``orchestrator.contracts`` and ``orchestrator.capabilities`` are leaves: they import nothing of the project
  outside ``contracts``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from tests.conftest import REPO

HEAVY_AT_MODULE_LEVEL = {
    "ray": {"orchestrator.serving.router", "orchestrator.serving.node_front_doors", "workers.replica"},
    "torch": set(),
    "pynvml": set(),
    "transformers": set(),
    "onnxruntime": set(),
    "onnx": set(),
    "uvicorn": {"orchestrator.frontdoor.edge"},
    "httptools": {"orchestrator.frontdoor.edge"},
    "fastapi": {"workers.http_api", "workers.dashboard"},
}
CONTROL_TO_WORKERS = {"orchestrator.cli.serve", "orchestrator.steps", "orchestrator.serving.deploy"}
CONTRACTS = "orchestrator.contracts"
WORKERS_TO_CONTROL: set[str] = set()  # may stay empty: what replicas need of the control plane is a contract


def modules() -> Iterator[tuple[str, ast.Module]]:
    for package in ("orchestrator", "workers"):
        for path in sorted((REPO / package).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            yield name, ast.parse(path.read_text(), str(path))


def imports(tree: ast.Module, top_level_only: bool) -> Iterator[str]:
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_heavy_packages_are_imported_at_module_level_only_where_they_are_the_point() -> None:
    found = {package: set() for package in HEAVY_AT_MODULE_LEVEL}
    for name, tree in modules():
        for imported in imports(tree, top_level_only=True):
            root = imported.split(".")[0]
            if root in found:
                found[root].add(name)
    extra = {package: sorted(users - HEAVY_AT_MODULE_LEVEL[package]) for package, users in found.items()}
    assert not any(extra.values()), f"import these inside the functions that need them: {extra}"


def project_import(name: str) -> bool:
    return name.split(".")[0] in ("orchestrator", "workers")


def test_imports_between_the_control_plane_and_the_workers_point_one_way() -> None:
    trees = dict(modules())
    leaves = {  # modules that import nothing of the project but contracts
        name
        for name, tree in trees.items()
        if not any(project_import(i) and not i.startswith(CONTRACTS) for i in imports(tree, False))
    }
    crossing_out, crossing_in = set(), set()
    for name, tree in trees.items():
        for imported in imports(tree, top_level_only=False):
            if name.startswith("orchestrator") and imported.startswith("workers"):
                crossing_out.add(name)
            if name.startswith("workers") and imported.startswith("orchestrator"):
                crossing_in.add(imported)
    assert crossing_out <= CONTROL_TO_WORKERS, f"control plane importing workers: {crossing_out - CONTROL_TO_WORKERS}"
    contracts = {name for name in crossing_in if name == CONTRACTS or name.startswith(CONTRACTS + ".")}
    unexpected = crossing_in - WORKERS_TO_CONTROL - leaves - contracts
    assert not unexpected, f"workers importing control-plane modules: {unexpected}"


def test_the_contracts_and_the_capabilities_are_leaves() -> None:
    """What both sides share imports nothing of either side (only other contracts)."""
    trees = dict(modules())
    shared = [name for name in trees if name.startswith(CONTRACTS)] + ["orchestrator.capabilities"]
    assert "orchestrator.contracts.errors" in shared
    for leaf in shared:
        outside = [
            name for name in imports(trees[leaf], False) if project_import(name) and not name.startswith(CONTRACTS)
        ]
        assert outside == [], f"{leaf} imports {outside}"
