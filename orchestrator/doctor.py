"""The seed's troubleshooting checks as data: each check passes, warns or fails, and says how to fix it.

Pure: it reads a probed Topology and an environment mapping, so tests drive it with the fake NVML's fixtures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.hardware.driver_floor import driver_floor_problems
from orchestrator.hardware.topology import Topology

MIN_DRIVER = (450, 80, 2)
MIG_CAPABLE_HINT = "A100, A30, H100, H200, B200 (Ampere or newer data-centre GPUs)"


@dataclass(frozen=True)
class Check:
    """One line of ``orchestrator doctor``."""

    name: str
    status: str  # "pass", "warn" or "fail"
    detail: str
    fix: str = ""


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _driver_checks(topology: Topology) -> list[Check]:
    if topology.gpu_error is not None:  # a driver is installed but NVML fails: not a machine without GPUs
        return [Check("NVIDIA driver", "fail", topology.gpu_error)]
    if not topology.gpus:
        return [
            Check(
                "NVIDIA driver",
                "warn",
                topology.gpu_note or "no GPU found",
                "install the NVIDIA driver (and in containers run with --gpus); until then CPU pools serve",
            )
        ]
    checks = [Check("NVIDIA driver", "pass", f"{len(topology.gpus)} GPU(s) through NVML")]
    version = topology.driver_version
    if version is None:
        checks.append(Check("driver version", "warn", "NVML did not report the driver version"))
    elif _version_tuple(version) < MIN_DRIVER:
        checks.append(
            Check("driver version", "fail", f"{version} is older than 450.80.02", "upgrade the driver to R450.80+")
        )
    elif floors := driver_floor_problems(topology):
        checks += [Check("driver version", "fail", line) for line in floors]  # each line ends with its fix
    else:
        checks.append(Check("driver version", "pass", f"{version} (new enough for MIG on every GPU here)"))
    return checks


def _gpu_checks(topology: Topology) -> list[Check]:
    checks = []
    for gpu in topology.gpus:
        label = f"GPU {gpu.index} ({gpu.name})"
        if not gpu.mig_supported:
            checks.append(
                Check(
                    f"{label} MIG support",
                    "warn",
                    "this GPU cannot do MIG",
                    f"serve it whole (type: gpu); MIG needs {MIG_CAPABLE_HINT}",
                )
            )
            continue
        if gpu.mig_reset_pending:
            checks.append(
                Check(
                    f"{label} MIG mode",
                    "fail",
                    f"mode change pending (current {'on' if gpu.mig_enabled else 'off'}, "
                    f"pending {'on' if gpu.mig_pending_enabled else 'off'})",
                    f"reset the GPU: sudo nvidia-smi -r -i {gpu.index} (or reboot)",
                )
            )
        elif not gpu.mig_enabled:
            checks.append(
                Check(f"{label} MIG mode", "warn", "MIG is disabled", f"sudo nvidia-smi -i {gpu.index} -mig 1")
            )
        elif not gpu.slices:
            checks.append(
                Check(
                    f"{label} MIG mode",
                    "warn",
                    "MIG is on but no GPU instance exists: CUDA sees nothing on this GPU",
                    "create slices: orchestrator mig plan --config ... --apply",
                )
            )
        else:
            profiles = ", ".join(s.profile for s in gpu.slices)
            checks.append(Check(f"{label} MIG mode", "pass", f"on, {len(gpu.slices)} slice(s): {profiles}"))
        if gpu.process_pids:
            pids = ", ".join(map(str, gpu.process_pids))
            checks.append(
                Check(
                    f"{label} processes",
                    "warn",
                    f"in use by process(es) {pids}",
                    "stop them before changing MIG instances (nvidia-smi shows them)",
                )
            )
    return checks


def _container_checks(environ: Mapping[str, str]) -> list[Check]:
    capabilities = environ.get("NVIDIA_DRIVER_CAPABILITIES")
    if capabilities is None:
        return [
            Check("container capabilities", "pass", "not in an NVIDIA container (NVIDIA_DRIVER_CAPABILITIES unset)")
        ]
    granted = {c.strip() for c in capabilities.split(",")}
    missing = [] if "all" in granted else [c for c in ("compute", "utility") if c not in granted]
    if missing:
        return [
            Check(
                "container capabilities",
                "fail",
                f"NVIDIA_DRIVER_CAPABILITIES={capabilities} lacks {', '.join(missing)}",
                "run the container with -e NVIDIA_DRIVER_CAPABILITIES=compute,utility",
            )
        ]
    checks = [Check("container capabilities", "pass", f"NVIDIA_DRIVER_CAPABILITIES={capabilities}")]
    if "all" not in granted and "mig" not in granted:
        checks.append(
            Check(
                "container MIG capability",
                "warn",
                "no 'mig' in NVIDIA_DRIVER_CAPABILITIES: serving on a slice works, listing or changing MIG "
                "instances from inside the container may not",
                "add it as the seed's Dockerfile does: NVIDIA_DRIVER_CAPABILITIES=compute,utility,mig",
            )
        )
    if environ.get("NVIDIA_VISIBLE_DEVICES", "") in ("", "void", "none"):
        checks.append(
            Check(
                "container devices",
                "warn",
                "NVIDIA_VISIBLE_DEVICES is unset or empty: the container may see no GPU",
                "run with --gpus all, or -e NVIDIA_VISIBLE_DEVICES=all",
            )
        )
    return checks


TORCH_NOT_CHECKED = "not checked"
TORCH_MISSING = "missing"
TORCH_INSTALL_HINT = "see the README's 'On a GPU machine': install the torch build for your driver, then the project"


def _cuda_version(number: int) -> tuple[int, int]:
    """NVML's CUDA version integer (12040) as (major, minor): (12, 4)."""
    return number // 1000, (number % 1000) // 10


def torch_checks(topology: Topology, torch_cuda: str | None) -> list[Check]:
    """Can this torch use this driver's GPUs? ``torch_cuda`` is ``torch.version.cuda`` (None: a CPU build), or
    ``TORCH_MISSING``. The torch 2.13 wheel from the package index is a CUDA 13 build, which needs an R580+ driver:
    on an older driver every GPU replica fails with "CUDA is not available" while the driver checks pass
    (gpu-audit B1). A build for a newer minor CUDA release than the driver's usually runs (CUDA's minor version
    compatibility), hence a warning; a newer major release cannot."""
    if not topology.gpus or torch_cuda == TORCH_NOT_CHECKED:
        return []
    if torch_cuda == TORCH_MISSING:
        return [Check("torch for the GPUs", "fail", "torch is not installed", TORCH_INSTALL_HINT)]
    if torch_cuda is None:
        return [
            Check("torch for the GPUs", "fail", "torch is a CPU build: GPU replicas cannot start", TORCH_INSTALL_HINT)
        ]
    if topology.cuda_driver_version is None:
        return [
            Check("torch for the GPUs", "warn", f"torch is built for CUDA {torch_cuda}; NVML did not say the driver's")
        ]
    driver = _cuda_version(topology.cuda_driver_version)
    built = _version_tuple(torch_cuda)[:2]
    versions = f"torch is built for CUDA {torch_cuda}, the driver {topology.driver_version or ''} supports CUDA"
    detail = f"{versions} {driver[0]}.{driver[1]}".replace("  ", " ")
    if built[0] > driver[0]:
        fix = f"upgrade the driver (CUDA {built[0]} needs R580+ for 13.x, R525+ for 12.x) or {TORCH_INSTALL_HINT}"
        return [Check("torch for the GPUs", "fail", detail, fix)]
    if built > driver:
        return [Check("torch for the GPUs", "warn", detail + " (minor version compatibility)", "")]
    return [Check("torch for the GPUs", "pass", detail)]


@dataclass(frozen=True)
class ServingFacts:
    """What ``doctor`` checks before ``up`` would start: the ONNX backend, its export cache and the port."""

    onnx_needed: bool  # some instance here is planned on the onnx backend
    onnx_installed: bool
    cache_problem: str | None  # why the export cache cannot work (None: it holds the graph or can take it)
    cache_detail: str
    address: str  # server.host:port
    port_problem: str | None  # why the address cannot be listened on (None: free)


def serving_checks(facts: ServingFacts) -> list[Check]:
    """The ONNX backend, its export cache and the port, as ``up`` will need them."""
    checks = []
    if facts.onnx_needed and not facts.onnx_installed:
        checks.append(
            Check(
                "onnx backend",
                "fail",
                "planned here, but onnxruntime/onnx/onnxscript do not import",
                "pip install -e . again (they are base dependencies), or set model.backend: torch",
            )
        )
    elif facts.onnx_needed:
        checks.append(Check("onnx backend", "pass", "onnxruntime, onnx and onnxscript import"))
    if facts.cache_problem is not None:
        checks.append(Check("ONNX export cache", "fail", facts.cache_problem))
    else:
        checks.append(Check("ONNX export cache", "pass", facts.cache_detail))
    if facts.port_problem is not None:
        checks.append(Check("port", "fail", facts.port_problem))
    else:
        checks.append(Check("port", "pass", f"{facts.address} is free"))
    return checks


def run_checks(
    topology: Topology, environ: Mapping[str, str], torch_cuda: str | None = TORCH_NOT_CHECKED
) -> list[Check]:
    """All checks in the order a person would go through them (``torch_cuda``: see ``torch_checks``)."""
    checks = _driver_checks(topology) + torch_checks(topology, torch_cuda) + _gpu_checks(topology)
    checks += _container_checks(environ)
    checks += [Check("probe warning", "warn", warning) for warning in topology.warnings]
    return checks
