"""``bench --profile`` on this machine's CPU pools: the real model, measured in a pinned child, written to the file
that ``advise`` reads (small request counts: CI's 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from orchestrator.advisor.measurements import FORMAT, VERSION
from orchestrator.cli.advise import advise_command, bench_command
from tests.conftest import REPO

runner = CliRunner()


def test_bench_profile_writes_the_measurements_advise_reads(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command("bench")(bench_command)
    app.command("advise")(advise_command)
    sample = tmp_path / "sample.jsonl"
    sample.write_text(
        "\n".join(
            json.dumps({"input": [f"request {n} text {k} about vectors" for k in range(n % 4 + 1)]}) for n in range(12)
        )
    )
    out = tmp_path / "m.json"
    result = runner.invoke(
        app,
        [
            "bench",
            "--profile",
            "--config",
            str(REPO / "configs" / "mig_config.yaml"),
            "--out",
            str(out),
            "--sample",
            str(sample),
            "--requests",
            "12",
            "--low-load-requests",
            "8",
            "--clients",
            "4",
            "--no-served",
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert (written["format"], written["version"]) == (FORMAT, VERSION)
    assert written["model"]["name"] == "all-MiniLM-L6-v2" and written["model"]["dimensions"] == 384
    assert written["workload"]["sample_requests"] == 12 and written["served"] is None
    (row,) = written["types"]
    assert row["type"] == "cpu-1t" and row["kind"] == "cpu" and row["threads"] == 1
    assert row["saturation_rps"] > 0 and 0 < row["low_load_p50_ms"] <= row["low_load_p99_ms"]
    assert len(row["size_quantiles"]) == 21 and row["requests"] == {"low_load": 8, "saturation": 12, "clients": 4}
    # The spread at saturation: in-process only when the measuring child reports its completions; 12 requests are
    # too few to say (at least 20 service times), so the row has none either way and advise falls back to low load.
    assert "saturation_quantiles" not in row

    layout = runner.invoke(
        app,
        [
            "advise",
            "--layout",
            "cpu-1t x2",
            "--target-rps",
            "1",
            "--p99-ms",
            "5000",
            "-m",
            str(out),
            "--model",
            "all-MiniLM-L6-v2",
        ],
        env={"COLUMNS": "200"},
    )
    assert layout.exit_code == 0, layout.output
    assert "given" in layout.output and "assumed (0.88)" in layout.output


def test_the_served_check_measures_service_times_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real ``up`` of this machine's 1-thread pools, saturated briefly, then an open loop at half its rate: the
    answers' own queue and inference times give the lone and back-to-back services at that load (version 3)."""
    from orchestrator.advisor import profiling
    from orchestrator.advisor.measurements import Measurements, TypeMeasurement
    from orchestrator.advisor.workload import Workload

    monkeypatch.setattr(profiling, "SPREAD_REQUESTS", 40)
    monkeypatch.setattr(profiling, "LOAD_FRACTIONS", (0.5,))
    monkeypatch.setattr(profiling, "LOAD_REQUESTS", 120)
    row = TypeMeasurement("cpu-1t", "cpu", 8.0, 128.0, 120.0, 118.0, 160.0, (1.0,) * 21, threads=1)
    measured = Measurements({"name": "all-MiniLM-L6-v2", "dimensions": 384}, {}, {}, {}, (row,))
    check = profiling.served_check(measured, REPO / "configs" / "mig_config.yaml", Workload(), 40, 4)
    (point,) = check.load_points["cpu-1t"]
    assert 0.3 < point.utilisation < 0.7 and point.requests == 120
    assert point.lone >= 20 and point.queued >= 20 and point.lone + point.queued == 120
    # A request of 16 texts on one core takes tens of ms; the front door, lane and client add a few.
    assert 20 < point.lone_mean_ms < 2000 and 20 < point.queued_mean_ms < 2000 and 0 < point.outside_ms < 200
    assert len(point.queued_quantiles) == 21 and f"at {point.utilisation:.0%} load" in check.how


def test_the_measuring_child_measures_at_load_in_process(tmp_path: Path) -> None:
    """What a GPU row gets (the served check runs on CPU only): the real instance in its pinned child, after its
    saturated run, answering Poisson arrivals at half that rate, each answer's own queue and inference times kept."""
    import yaml

    from orchestrator.advisor.profile_child import measure_in_child
    from orchestrator.advisor.profiling import InstanceType, type_config
    from orchestrator.advisor.workload import Workload

    base_path = REPO / "configs" / "mig_config.yaml"
    config = type_config(yaml.safe_load(base_path.read_text()), base_path.parent, InstanceType("cpu", "cpu", None, 1))
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(config))
    child = measure_in_child(path, Workload().requests(40), 5, 20, 4, 300.0, (0.5,), 40)
    (run,) = child["at_load"]
    assert 0.2 * child["saturation_rps"] < run["rate"] < 0.9 * child["saturation_rps"]
    assert len(run["records"]) == 40
    sent = [record[0] for record in run["records"]]
    assert sent == sorted(sent)
    for _, latency, queue, inference in run["records"]:
        assert 0 <= queue < latency and 0 < inference <= latency
