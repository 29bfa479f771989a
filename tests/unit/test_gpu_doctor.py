"""``doctor --gpu`` logic: one pinned child process per GPU instance of the plan, one row each.

The children are real processes (``python -m workers.selftest``); on this machine, which has no GPU, a child gets as
far as a replica would: the pin finds no CUDA and says so.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from orchestrator.config import parse_config
from orchestrator.contracts.replica_spec import ReplicaSpec
from orchestrator.gpu_doctor import NOTHING_TO_CHECK, report_json, run_gpu_doctor, selftest_request
from orchestrator.hardware.topology import CpuTopology, GpuInfo, Topology
from orchestrator.planning.planner import plan

H100 = GpuInfo(0, "NVIDIA H100 80GB HBM3", "GPU-4579f2e7-8948-4ba8-8960-aef04e672684", 81559)


def spec_for(folder: Path, instances: list[dict], gpus: tuple[GpuInfo, ...] = ()) -> ReplicaSpec:
    raw = {"model": {"path": str(folder)}, "mig_instances": instances}
    placement = plan(parse_config(raw), Topology(cpu=CpuTopology(cores=(0, 1)), gpus=gpus))
    return ReplicaSpec(
        placement, None, str(folder), "m", "mean", "auto", "auto", "right", {}, None, "none", None, None, True, 8, 1
    )


def test_without_a_gpu_it_explains_there_is_nothing_to_check(minilm_folder: Path) -> None:
    report = run_gpu_doctor(spec_for(minilm_folder, [{"name": "a"}, {"name": "b"}]))
    assert report.rows == () and report.ok and report.lines() == [NOTHING_TO_CHECK]
    assert "no GPU or MIG slice to check" in NOTHING_TO_CHECK


def test_a_child_on_a_machine_without_cuda_fails_at_the_pin(minilm_folder: Path) -> None:
    spec = spec_for(minilm_folder, [{"name": "g", "type": "gpu"}, {"name": "c"}], (H100,))
    request = selftest_request(spec, spec.plan.instances[0])
    assert request["device_uuids"] == [H100.uuid] and request["parent_uuid"] is None
    assert request["max_batch_tokens"] == 16384 and request["model_folder"] == str(minilm_folder)
    report = run_gpu_doctor(spec, timeout_s=120)
    (row,) = report.rows  # the CPU instance is not a slice
    assert not report.ok and not row.ok and row.where == f"GPU 0 (whole) {H100.uuid}"
    assert [(c.name, c.ok) for c in row.checks] == [("pin", False)]
    assert "CUDA is not available in this replica" in row.checks[0].detail
    assert row.line().startswith(f"FAIL g on GPU 0 (whole) {H100.uuid}: pin FAILED: CUDA is not available")
    assert json.loads(report_json(report))["rows"][0]["checks"][0]["name"] == "pin"


def test_a_child_that_dies_is_a_failed_row_with_its_last_words(minilm_folder: Path) -> None:
    spec = spec_for(minilm_folder, [{"name": "g", "type": "gpu"}], (H100,))
    dying = (sys.executable, "-c", "import sys; print('Segmentation fault in libcuda', file=sys.stderr); sys.exit(139)")
    (row,) = run_gpu_doctor(spec, child_command=dying).rows
    assert not row.ok
    assert row.checks[0].detail == "the self-test process exited with 139: Segmentation fault in libcuda"
    silent = (sys.executable, "-c", "import time; time.sleep(30)")
    (row,) = run_gpu_doctor(spec, child_command=silent, timeout_s=1).rows
    assert not row.ok and row.checks[0].detail == "no answer within 1 s"


def test_a_config_without_gpus_is_planned_and_explained(tmp_path: Path, minilm_folder: Path) -> None:
    from orchestrator.gpu_doctor import main

    config = tmp_path / "cpu.yaml"
    config.write_text(f"model:\n  path: {minilm_folder}\nmig_instances:\n  - name: a\n    type: cpu\n")
    assert main(["gpu_doctor", str(config), "--json"]) == 0
