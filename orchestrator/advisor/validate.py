"""Prediction against a real run, on CPU pools: ``python -m orchestrator.advisor.validate MEASUREMENTS CONFIG``.

For each layout of pools (``--layouts 1x2 2x1``: pools x threads) and each target load (``--loads 0.5 0.8``: a
fraction of the layout's predicted capacity), prints the advisor's prediction (throughput, p99) and what a real
``orchestrator up`` with that layout did under open-loop Poisson load at that rate (docs/advisor.md).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml

from orchestrator.advisor.loadgen import closed_loop, free_port, open_loop, running_service
from orchestrator.advisor.measurements import load_measurements
from orchestrator.advisor.predict import cpu_model, predict
from orchestrator.advisor.profiling import InstanceType, type_config
from orchestrator.advisor.workload import Workload, load_sample


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("measurements", type=Path)
    parser.add_argument("config", type=Path)
    parser.add_argument("--layouts", nargs="+", default=["1x2", "2x1"], help="POOLSxTHREADS")
    parser.add_argument("--loads", type=float, nargs="+", default=[0.5, 0.8])
    parser.add_argument("--requests", type=int, default=300, help="requests per run")
    parser.add_argument("--sample", type=Path, help="the sample the measurements used, if any")
    args = parser.parse_args(argv)
    measurements = load_measurements(args.measurements)
    workload = load_sample(args.sample) if args.sample else Workload()
    if not args.sample and "texts_per_request" in measurements.workload:
        from orchestrator.advisor.workload import Spread

        w = measurements.workload
        workload = Workload(Spread(**w["texts_per_request"]), Spread(**w["tokens_per_text"]))
    base = yaml.safe_load(args.config.read_text()) or {}
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
                saturated = closed_loop(url, workload.requests(args.requests, seed=4), 8)
                print(
                    f"{pools} pool(s) x {threads} thread(s): predicted capacity {capacity:.2f} req/s, served at "
                    f"saturation {saturated.throughput_rps:.2f} req/s ({saturated.throughput_rps / capacity:.2f}x)"
                )
                for load in args.loads:
                    rate = load * capacity
                    predicted = predict(instances, rate, 1e9)
                    real = open_loop(url, workload.requests(args.requests, seed=int(load * 100)), rate)
                    print(
                        f"  {load:.0%} load, {rate:.2f} req/s: predicted p50 {predicted.p50_ms:.0f} ms p99 "
                        f"{predicted.p99_ms:.0f} ms; measured {real.throughput_rps:.2f} req/s, p50 "
                        f"{real.percentile_ms(50):.0f} ms p99 {real.percentile_ms(99):.0f} ms, {real.errors} errors "
                        f"(p99 measured/predicted {real.percentile_ms(99) / predicted.p99_ms:.2f})"
                    )


if __name__ == "__main__":
    main()
