"""Prediction against a real run, on CPU pools: ``python -m orchestrator.advisor.validate MEASUREMENTS CONFIG``.

For each layout of pools (``--layouts 1x2 2x1``: pools x threads) and each target load (``--loads 0.5 0.8``: a
fraction of the layout's predicted capacity), prints the advisor's prediction and what a real ``orchestrator up``
with that layout did under open-loop Poisson load at that rate (docs/advisor.md): throughput, p50, and the p99 with
its 95 % interval (``intervals``), and whether the predicted p99 lies inside that interval.

Two predictions per run: from the measurements file alone (what ``advise`` says), and at the capacity this run
measured (the file's instances scaled to the served throughput at saturation just measured). A capacity error moves
the whole latency curve (at "80 %" of a capacity 13 % too high the real service runs at 92 %); the second prediction
takes that out, so its p99 checks the spread model alone.

``--remeasure`` judges the model rather than the file: in each layout's own ``up``, just before its loads, it measures
the capacity (the saturated run) and the service times at load again (``profiling.served_load_points``, at other
loads than the ones validated), and predicts from those. On a shared machine whose speed drifts by minutes this takes
the drift between the bench and the validation out (docs/advisor.md measured 0.82-0.93 of the file's capacity during
validations); what is left is the model and the run's own noise. Both predictions are then the same.

Requests per run: 1,000 by default, which leaves about 10 latencies above the p99 and an interval between the 983rd
and 997th smallest; at 50 % of 15 req/s such a run takes about 2 minutes. Ends with markdown rows for the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
from pathlib import Path

import yaml

from orchestrator.advisor.intervals import Interval, percentile_interval
from orchestrator.advisor.load_points import describe_loads
from orchestrator.advisor.loadgen import closed_loop, free_port, open_loop, running_service
from orchestrator.advisor.measurements import AdvisorError, Measurements, load_measurements
from orchestrator.advisor.predict import InstanceModel, Prediction, cpu_model, predict
from orchestrator.advisor.profiling import LOAD_REQUESTS, InstanceType, served_load_points, type_config
from orchestrator.advisor.simulation import percentile
from orchestrator.advisor.workload import Spread, Workload, load_sample

REQUESTS = 1000
SATURATION_REQUESTS = 300
SIM_REQUESTS = 40_000  # the prediction's own p99 is then steady to a few per cent (two servers: ~1 s)


def _ms(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:,.0f}"


def interval_text(interval: Interval) -> str:
    """``"972 ms (interval 850-1,130 ms, 1,000 requests)"``."""
    low, high = (_ms(v * 1000) for v in (interval.low, interval.high))
    return f"{_ms(interval.estimate * 1000)} ms (interval {low}-{high} ms, {interval.samples:,} requests)"


def p99_line(label: str, prediction: Prediction, interval: Interval) -> str:
    """One prediction against the measured interval, in words."""
    if math.isinf(prediction.p99_ms):
        return f"    {label}: saturated ({prediction.limit})"
    ratio = interval.estimate * 1000 / prediction.p99_ms
    return (
        f"    {label}: p50 {prediction.p50_ms:,.0f} ms, p99 {prediction.p99_ms:,.0f} ms: "
        f"{interval.verdict(prediction.p99_ms / 1000)} (measured/predicted {ratio:.2f})"
    )


def where(prediction: Prediction, interval: Interval) -> str:
    """The table's word for a predicted p99 against the measured interval."""
    if math.isinf(prediction.p99_ms):
        return "saturated"
    p99_s = prediction.p99_ms / 1000
    return "inside" if interval.holds(p99_s) else ("below" if p99_s < interval.low else "above")


def _workload(args: argparse.Namespace, measurements: Measurements) -> Workload:
    if args.sample:
        return load_sample(args.sample)
    recorded = measurements.workload
    if "texts_per_request" in recorded:
        return Workload(Spread(**recorded["texts_per_request"]), Spread(**recorded["tokens_per_text"]))
    return Workload()


def _at_capacity(instances: list[InstanceModel], factor: float) -> list[InstanceModel]:
    return [dataclasses.replace(i, rps=i.rps * factor) for i in instances]


def _remeasured(
    url: str, workload: Workload, instances: list[InstanceModel], served: float
) -> tuple[list[InstanceModel], float]:
    """The layout's instances at the capacity just served and with the service times at load measured now."""
    points = served_load_points(url, workload.requests(LOAD_REQUESTS, seed=34), served)
    if not points:
        raise SystemExit("--remeasure: too few lone or queued services at load to say; raise the load's requests")
    each = served / len(instances)
    remeasured = [
        dataclasses.replace(
            i, rps=each, load_points=points, spread_basis=f"re-measured, at {describe_loads(points)} load"
        )
        for i in instances
    ]
    return remeasured, served


def _one_load(
    url: str,
    workload: Workload,
    args: argparse.Namespace,
    instances: list[InstanceModel],
    served: float,
    load: float,
    name: str,
) -> str:
    """One open-loop run at ``load`` of the predicted capacity against both predictions; prints it, returns its
    markdown row."""
    capacity = sum(i.rps for i in instances)
    rate = load * capacity
    predicted = predict(instances, rate, math.inf, requests=SIM_REQUESTS)
    at_served = predict(_at_capacity(instances, served / capacity), rate, math.inf, requests=SIM_REQUESTS)
    print(f"  {load:.0%} load, {rate:.2f} req/s: {args.requests} requests, ~{args.requests / rate:.0f} s", flush=True)
    real = open_loop(url, workload.requests(args.requests, seed=int(load * 100)), rate)
    interval = percentile_interval(real.in_order_s, 99, args.confidence)
    p50 = percentile(real.latencies_s, 50) * 1000
    print(
        f"    measured {real.throughput_rps:.2f} req/s, {real.errors} errors, p50 {p50:,.0f} ms, p99 "
        f"{interval_text(interval)}"
    )
    print(p99_line("predicted", predicted, interval))
    print(p99_line(f"at the served capacity ({served:.2f} req/s)", at_served, interval), flush=True)
    return (
        f"| {name} | {load:.0%} | {rate:.2f} | {capacity:.2f} / {served:.2f} | {_ms(predicted.p50_ms)} / "
        f"{_ms(predicted.p99_ms)} | {_ms(at_served.p50_ms)} / {_ms(at_served.p99_ms)} | {p50:,.0f} / "
        f"{interval_text(interval)} | {where(predicted, interval)} / {where(at_served, interval)} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("measurements", type=Path)
    parser.add_argument("config", type=Path)
    parser.add_argument("--layouts", nargs="+", default=["1x2", "2x1"], help="POOLSxTHREADS")
    parser.add_argument("--loads", type=float, nargs="+", default=[0.5, 0.8])
    parser.add_argument("--requests", type=int, default=REQUESTS, help="requests per open-loop run")
    parser.add_argument("--saturation-requests", type=int, default=SATURATION_REQUESTS)
    parser.add_argument("--confidence", type=float, default=0.95, help="of the measured p99's interval")
    parser.add_argument("--sample", type=Path, help="the sample the measurements used, if any")
    parser.add_argument(
        "--remeasure",
        action="store_true",
        help="predict from the capacity and service times at load measured in each layout's own run, not the file's",
    )
    args = parser.parse_args(argv)
    measurements = load_measurements(args.measurements)
    workload = _workload(args, measurements)
    base = yaml.safe_load(args.config.read_text()) or {}
    table: list[str] = []
    for layout in args.layouts:
        pools, threads = (int(x) for x in layout.split("x"))
        row = measurements.by_type(f"cpu-{threads}t")
        if row is None:
            raise SystemExit(f"cpu-{threads}t was not measured in {args.measurements}")
        instances = [cpu_model(row, measurements)] * pools
        capacity = sum(i.rps for i in instances)
        config = type_config(base, args.config.parent, InstanceType("cpu", "cpu", None, threads), pools)
        port = free_port()
        config["server"] = {**(config.get("server") or {}), "port": port}
        url = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "layout.yaml"
            path.write_text(yaml.safe_dump(config))
            with running_service(path, url):
                closed_loop(url, workload.requests(8, seed=3), 2)
                saturated = closed_loop(url, workload.requests(args.saturation_requests, seed=4), max(8, 2 * pools))
                served = saturated.throughput_rps
                if args.remeasure:
                    instances, capacity = _remeasured(url, workload, instances, served)
                print(
                    f"{pools} pool(s) x {threads} thread(s): predicted capacity {capacity:.2f} req/s, served at "
                    f"saturation {served:.2f} req/s ({served / capacity:.2f}x); service spread under load: "
                    f"{instances[0].spread_basis}",
                    flush=True,
                )
                for load in args.loads:
                    table.append(_one_load(url, workload, args, instances, served, load, f"{pools} x {threads}t"))
    print(
        "\n| layout | load | rate req/s | capacity predicted / served req/s | predicted p50 / p99 ms | at the served "
        "capacity p50 / p99 ms | measured p50 / p99 ms | predicted p99 in the interval (file / served capacity) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(table))


if __name__ == "__main__":
    try:
        main()
    except AdvisorError as error:  # a file that does not load, a service that does not start: one line, exit 2
        print(f"error: {error.message}", file=sys.stderr)
        sys.exit(2)
