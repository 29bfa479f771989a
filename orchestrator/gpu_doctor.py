"""``orchestrator doctor --gpu``: one self-test per GPU or MIG slice the plan uses, each in a child process pinned to
its device (``python -m workers.selftest``), gathered into one row per slice.

The child is started as a command, never imported: the control plane stays free of worker code and of CUDA (a
process that started CUDA could not pin another device). Slices are tested one after another, so that the tests of
whole GPUs never compete for memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from orchestrator.contracts.plan import PlannedInstance
from orchestrator.contracts.replica_spec import ReplicaSpec

CHILD_COMMAND = (sys.executable, "-m", "workers.selftest")
CHILD_TIMEOUT_S = 600.0
NOTHING_TO_CHECK = (
    "no GPU or MIG slice to check: the plan places every instance on CPU pools (no NVIDIA GPU was found, or the "
    "config asks for none), so there is no CUDA, pinning, precision or GPU memory to test here"
)


@dataclass(frozen=True)
class SliceCheck:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class SliceRow:
    """The self-test of one planned instance's device(s)."""

    instance: str
    where: str  # "GPU 0 1g.10gb MIG-..." / "GPU 1 (whole) GPU-..."
    ok: bool
    checks: tuple[SliceCheck, ...] = field(default_factory=tuple)

    def line(self) -> str:
        """One line for the terminal: the verdict, then each check's name and detail."""
        verdict = "ok  " if self.ok else "FAIL"
        parts = "; ".join(f"{c.name} {'ok' if c.ok else 'FAILED'}: {c.detail}" for c in self.checks)
        return f"{verdict} {self.instance} on {self.where}: {parts}"


@dataclass(frozen=True)
class GpuDoctorReport:
    """All rows; ``note`` explains an empty report. ``ok``: every row passed (and there was something to check)."""

    rows: tuple[SliceRow, ...]
    note: str = ""

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    def lines(self) -> list[str]:
        return [row.line() for row in self.rows] or [self.note]


def selftest_request(spec: ReplicaSpec, instance: PlannedInstance) -> dict[str, object]:
    """The JSON request ``workers.selftest`` reads for one GPU instance of the plan."""
    gpu = instance.gpu
    if gpu is None:
        raise ValueError(f"instance {instance.name} has no GPU")
    return {
        "instance": instance.name,
        "device_uuids": list(gpu.device_uuids),
        "parent_uuid": gpu.gpu_uuid if gpu.kind == "mig" else None,
        "memory_mb": gpu.memory_mb,
        "model_folder": spec.model_folder,
        "dtype": spec.dtype,
        "attn_implementation": spec.attn_implementation,
        "pooling": spec.pooling,
        "padding_side": spec.padding_side,
        "max_input_tokens": spec.max_input_tokens,
        "max_batch_tokens": instance.max_batch_tokens,
        "max_concurrency": instance.max_concurrency,
    }


def _where(instance: PlannedInstance) -> str:
    gpu = instance.gpu
    assert gpu is not None
    if gpu.kind == "mig":
        return f"GPU {gpu.gpu_index} {gpu.profile} {gpu.device_uuid}"
    return f"GPU {','.join(map(str, gpu.gpu_indices))} (whole) {','.join(gpu.device_uuids)}"


def run_gpu_doctor(
    spec: ReplicaSpec,
    child_command: Sequence[str] = CHILD_COMMAND,
    timeout_s: float = CHILD_TIMEOUT_S,
) -> GpuDoctorReport:
    """Self-test every GPU instance of ``spec.plan`` on this machine (instances of other nodes are skipped)."""
    instances = [i for i in spec.plan.instances_on_node(spec.node_id) if i.gpu is not None]
    if not instances:
        return GpuDoctorReport(rows=(), note=NOTHING_TO_CHECK)
    return GpuDoctorReport(rows=tuple(_test_one(spec, i, child_command, timeout_s) for i in instances))


def _test_one(spec: ReplicaSpec, instance: PlannedInstance, command: Sequence[str], timeout_s: float) -> SliceRow:
    request = json.dumps(selftest_request(spec, instance))
    where = _where(instance)
    try:
        done = subprocess.run([*command, request], capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        check = SliceCheck("selftest", False, f"no answer within {timeout_s:.0f} s")
        return SliceRow(instance.name, where, False, (check,))
    answer = next((line for line in reversed(done.stdout.splitlines()) if line.startswith("{")), None)
    if answer is None:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:]) or "no output"
        check = SliceCheck("selftest", False, f"the self-test process exited with {done.returncode}: {tail}")
        return SliceRow(instance.name, where, False, (check,))
    row = json.loads(answer)
    checks = tuple(SliceCheck(c["name"], bool(c["ok"]), str(c["detail"])) for c in row["checks"])
    return SliceRow(instance.name, where, bool(row["ok"]) and done.returncode == 0, checks)


def report_json(report: GpuDoctorReport) -> str:
    """The report as JSON (for scripts: ``--json``)."""
    return json.dumps({"ok": report.ok, "note": report.note, "rows": [asdict(row) for row in report.rows]})


def doctor_gpu(config_path: str) -> GpuDoctorReport:
    """Load the config, plan it on this machine as ``up`` would, and self-test its GPU instances. Raises the
    config's and the planner's errors (ConfigError, PlanError)."""
    from orchestrator import steps

    loaded = steps.load(Path(config_path))
    placement, _gpu_note = steps.plan_here(loaded)
    spec = steps.replica_spec_here(loaded, placement)
    return run_gpu_doctor(spec)


def main(argv: Sequence[str]) -> int:
    """``python -m orchestrator.gpu_doctor CONFIG [--json]``: the rows, exit 1 on any failed row."""
    report = doctor_gpu(argv[1])
    print(report_json(report) if "--json" in argv else "\n".join(report.lines()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
