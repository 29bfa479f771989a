"""Which optional packages an environment can import, and what that allows: the one place that looks.

Three optional features change what a plan may hold: flash attention (``flash_attn``, the ``gpu`` extra), the ONNX
backend (``onnxruntime``, ``onnx`` and ``onnxscript`` together) and splitting one model over several whole GPUs
(``accelerate``, the ``gpu`` extra). ``detect`` looks them up in this process; the planner only ever receives a
``Capabilities`` (it does no I/O), the CLI detects once per command, each cluster node reports the names that
import there (``installed(NODE_PACKAGES)``) and the planner reads them with ``Capabilities.on_node``, and a replica
detects in its own process, where its model loads.

Lookups use ``importlib.util.find_spec``: it finds a package without importing it, so detecting costs milliseconds
and never initialises CUDA or loads flash-attn's kernels.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass

FLASH_ATTN_PACKAGES = ("flash_attn",)
ONNX_PACKAGES = ("onnxruntime", "onnx", "onnxscript")
ACCELERATE_PACKAGES = ("accelerate",)
ALL_PACKAGES = FLASH_ATTN_PACKAGES + ONNX_PACKAGES + ACCELERATE_PACKAGES
# What each node of a cluster looks up for the instances placed on it: a CPU head need not have the gpu extra its GPU
# nodes have. ONNX is not among them: it serves CPU pools only, and those run on the head, beside ``orchestrator up``,
# so the planning process's own environment decides it.
NODE_PACKAGES = FLASH_ATTN_PACKAGES + ACCELERATE_PACKAGES


@dataclass(frozen=True)
class Capabilities:
    """What the optional packages of one environment allow.

    The defaults are a plain ``pip install mig-orchestrator``: the ONNX packages are dependencies, flash-attn and
    accelerate come with the ``gpu`` extra.

    Attributes:
        flash_attn: flash-attn imports (``attn_implementation: flash_attention_2``, and ``auto`` on GPUs).
        onnx: onnxruntime, onnx and onnxscript all import (``backend: onnx``, and ``auto`` on CPU pools).
        accelerate: accelerate imports (an instance with ``gpus: N`` over several whole GPUs).
    """

    flash_attn: bool = False
    onnx: bool = True
    accelerate: bool = False

    @classmethod
    def from_packages(cls, packages: Iterable[str]) -> Capabilities:
        """The capabilities of an environment where exactly ``packages`` (top-level names) import."""
        names = frozenset(packages)
        return cls(
            flash_attn=names.issuperset(FLASH_ATTN_PACKAGES),
            onnx=names.issuperset(ONNX_PACKAGES),
            accelerate=names.issuperset(ACCELERATE_PACKAGES),
        )

    def on_node(self, reported: Iterable[str] | None) -> Capabilities:
        """These capabilities (the planning process's) as they hold on a cluster node that reported ``reported``,
        the ``NODE_PACKAGES`` that import there: the node decides flash attention and accelerate, this process the
        rest. None (the node's packages were not looked up) keeps these capabilities whole."""
        if reported is None:
            return self
        node = Capabilities.from_packages(reported)
        return dataclasses.replace(self, flash_attn=node.flash_attn, accelerate=node.accelerate)


BASE_INSTALL = Capabilities()


def installed(packages: Iterable[str]) -> frozenset[str]:
    """The ``packages`` (top-level names) that import in this process's environment."""
    return frozenset(name for name in packages if importlib.util.find_spec(name) is not None)


def detect() -> Capabilities:
    """The capabilities of this process's environment."""
    return Capabilities.from_packages(installed(ALL_PACKAGES))
