"""Service times at load (measurements version 3): read from a served run's answers, interpolated, used to predict."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from orchestrator.advisor.load_points import LoadPoint, RequestRecord, at_utilisation, point_from_records
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
from orchestrator.advisor.predict import cpu_model, predict

MODEL = "all-MiniLM-L6-v2"
FLAT = tuple(round(0.5 + i * 0.05, 2) for i in range(21))  # rounded as the file rounds them (4 places)
WIDE = (*(round(0.1 + 0.05 * i, 2) for i in range(20)), 8.0)


def served_run(rounds: list[tuple[int, float, bool]], outside_s: float = 0.006) -> list[RequestRecord]:
    """Records of one instance answering ``rounds`` one after another: (members, seconds, first found it idle).

    Members of a round start together; each is answered ``outside_s`` after the round ends (the way back), with an
    inference time from the round's start to its end, and a queue time that is 0 for an idle arrival."""
    records = []
    t = 0.0
    for members, seconds, idle in rounds:
        t += 0.5 if idle else 0.0
        for position in range(members):
            queue = 0.0005 if idle and position == 0 else 0.02 * (position + 1)
            arrived = t - queue
            latency = seconds + queue + outside_s + 0.002
            records.append(RequestRecord("pool-0", arrived - 0.002, latency, queue, seconds))
        t += seconds
    return records


def test_a_run_is_read_as_rounds_lone_and_queued_shares() -> None:
    """30 lone requests of 80 ms, 30 back to back of 100 ms, 10 rounds of 3 taking 240 ms (80 ms a request, all three
    waited): lone 80 ms, queued (30 x 100 + 30 x 80) / 60 = 90 ms; outside what the records say."""
    rounds = [(1, 0.08, True)] * 30 + [(1, 0.1, False)] * 30 + [(3, 0.24, False)] * 10
    random.Random(1).shuffle(rounds)
    point = point_from_records(served_run(rounds), 0.5)
    assert point is not None
    assert (point.lone, point.queued, point.requests) == (30, 60, 90)
    assert point.lone_mean_ms == pytest.approx(80.0)
    assert point.queued_mean_ms == pytest.approx(90.0)
    assert point.outside_ms == pytest.approx(8.0)  # 2 ms before the instance, 6 ms after
    assert point.lone_quantiles == pytest.approx((1.0,) * 21)
    assert point.queued_quantiles[0] == pytest.approx(80 / 90, rel=1e-3)
    assert point.queued_quantiles[-1] == pytest.approx(100 / 90, rel=1e-3)
    # A round whose first member found the instance idle: that one is lone, the others (who joined it) queued.
    joined = point_from_records(served_run([(2, 0.16, True)] * 25), 0.3)
    assert joined is not None and (joined.lone, joined.queued) == (25, 25)
    assert joined.lone_mean_ms == joined.queued_mean_ms == pytest.approx(80.0)
    # Too few of either kind to say.
    assert point_from_records(served_run([(1, 0.08, True)] * 40 + [(1, 0.1, False)] * 5), 0.2) is None


POINTS = (
    LoadPoint(0.35, 80.0, FLAT, 90.0, FLAT, 6.0),
    LoadPoint(0.7, 84.0, FLAT, 100.0, WIDE, 8.0),
)


def test_service_times_are_interpolated_by_utilisation() -> None:
    assert at_utilisation(POINTS, 0.2, 70.0) == POINTS[0]  # below the first point: the first
    middle = at_utilisation(POINTS, 0.525, 70.0)
    assert (middle.lone_mean_ms, middle.queued_mean_ms, middle.outside_ms) == pytest.approx((82.0, 95.0, 7.0))
    assert middle.queued_quantiles == pytest.approx(tuple((a + b) / 2 for a, b in zip(FLAT, WIDE, strict=True)))
    # Above the last point the back-to-back mean goes to the saturated service time at utilisation 1.
    high = at_utilisation(POINTS, 0.85, 70.0)
    assert high.queued_mean_ms == pytest.approx(85.0) and high.queued_quantiles == WIDE
    assert at_utilisation(POINTS, 1.0, 70.0).queued_mean_ms == pytest.approx(70.0)


def measured(points: tuple[LoadPoint, ...] = POINTS) -> Measurements:
    row = TypeMeasurement(
        type="cpu-2t",
        kind="cpu",
        threads=2,
        saturation_rps=12.0,
        texts_per_s=192.0,
        low_load_mean_ms=70.0,
        low_load_p50_ms=69.0,
        low_load_p99_ms=90.0,
        size_quantiles=FLAT,
    )
    served = ServedCheck(1.0, 0.0, "test", {"cpu-2t": WIDE}, {"cpu-2t": points} if points else {})
    return Measurements({"name": MODEL, "dimensions": 384}, {}, {}, {}, (row,), served)


def test_load_points_round_trip_and_replace_the_saturation_spread(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    save_measurements(measured(), path)
    assert json.loads(path.read_text())["version"] == VERSION == 3
    loaded = load_measurements(path, MODEL)
    assert loaded.served is not None and loaded.served.load_points["cpu-2t"] == POINTS
    (row,) = loaded.types
    model = cpu_model(row, loaded)
    assert model.spread_basis == "served, at 35% and 70% load"
    plain = cpu_model(row, measured(points=()))
    assert plain.spread_basis == "served, at saturation" and plain.load_points == ()

    # Alone, a request takes the lone service measured at load plus the time outside (80 + 6 ms), not the low-load
    # latency measured in-process (70 ms).
    alone = predict([model], 0.2, 1e9)
    assert alone.p50_ms == pytest.approx(86.0 * FLAT[10] / 1.0, rel=0.03)
    # Capacity is still the saturation throughput; the tail follows the back-to-back service at the load.
    at_half, at_high = predict([model], 6.0, 1e9), predict([model], 9.6, 1e9)
    assert at_half.capacity_rps == plain.rps == 12.0
    assert at_high.p99_ms > 2 * at_half.p99_ms
    # Back to back slower than alone (100 vs 84 ms at 70 %) and wider: a longer tail than the same file's spread at
    # saturation with the saturated mean.
    assert predict([model], 8.4, 1e9).p99_ms > predict([plain], 8.4, 1e9).p99_ms


def test_a_version_2_file_loads_without_load_points_and_cannot_hold_them(tmp_path: Path) -> None:
    raw = to_json(measured())
    path = tmp_path / "v2.json"
    path.write_text(json.dumps({**raw, "version": 2, "served": {**raw["served"], "load_points": {}}}))
    old = load_measurements(path, MODEL)
    assert old.served is not None and old.load_points(old.types[0]) == ()
    path.write_text(json.dumps({**raw, "version": 2}))
    with pytest.raises(AdvisorError, match="malformed measurements file .*load_points in a version 2 file"):
        load_measurements(path)
    broken = {**raw["served"]["load_points"]["cpu-2t"][0], "utilisation": 1.5}
    path.write_text(json.dumps({**raw, "served": {**raw["served"], "load_points": {"cpu-2t": [broken]}}}))
    with pytest.raises(AdvisorError, match="malformed measurements file .*no usable numbers"):
        load_measurements(path)


def test_a_gpu_row_gets_its_own_load_points_from_the_measuring_child(tmp_path: Path) -> None:
    """On a GPU the served check does not run: the child's in-process open loops (``at_load``) become the row's
    load points, saved and read back, and an unmeasured profile of the board takes them scaled by compute slices."""
    from orchestrator.advisor.layouts import board_named
    from orchestrator.advisor.predict import mig_model
    from orchestrator.advisor.profiling import InstanceType, ProfileSettings
    from orchestrator.advisor.profiling import _row as profile_row

    rng = random.Random(5)
    rounds = [(1, rng.uniform(0.008, 0.012), True) for _ in range(30)] + [(2, 0.02, False)] * 20
    rng.shuffle(rounds)
    records = [[r.sent_s, r.latency_s, r.queue_s, r.inference_s] for r in served_run(rounds, outside_s=0.001)]
    child = {
        "low_load_s": [0.01 + 0.0001 * i for i in range(40)],
        "saturation_rps": 100.0,
        "texts_per_s": 1600.0,
        "threads": None,
        "at_load": [{"rate": 50.0, "records": records}, {"rate": 70.0, "records": records[:10]}],
    }
    kind = InstanceType("1g.10gb", "mig", "H100-80GB", None, 1)
    row = profile_row(kind, child, ProfileSettings(40, 120, 4))
    (point,) = row.load_points  # the second run is too short to say
    assert point.utilisation == 0.5 and (point.lone, point.queued) == (30, 40)
    assert point.queued_mean_ms == pytest.approx(10.0)

    path = tmp_path / "gpu.json"
    save_measurements(Measurements({"name": MODEL, "dimensions": 384}, {}, {}, {}, (row,)), path)
    loaded = load_measurements(path, MODEL)
    assert loaded.types[0].load_points == row.load_points and loaded.load_points(loaded.types[0]) == row.load_points
    board = board_named("H100 80GB")
    profiles = {profile.name: profile for profile in board.profiles()}
    measured_model = mig_model(board, profiles["1g.10gb"], loaded)
    assert measured_model.spread_basis == "in-process, at 50% load" and measured_model.load_points == row.load_points
    bigger = mig_model(board, profiles["2g.20gb"], loaded)
    assert bigger.spread_basis == "in-process, at 50% load (of 1g.10gb)"
    (twice,) = bigger.load_points  # twice the compute: back to back twice as fast, a lone request no faster
    assert twice.queued_mean_ms == pytest.approx(point.queued_mean_ms / 2)
    assert twice.lone_mean_ms == pytest.approx(point.lone_mean_ms)
    raw = to_json(loaded)
    path.write_text(json.dumps({**raw, "version": 2}))
    with pytest.raises(AdvisorError, match="malformed measurements file .*load_points in a version 2 file"):
        load_measurements(path)
