"""``orchestrator bench --profile`` and ``orchestrator advise``: measure this machine, then size GPUs for a target.

Two typer commands as functions (registered in ``orchestrator/cli/__init__.py``). Exit codes as elsewhere: 2 for
input the advisor refuses (measurements of another model or version, an unknown GPU, a bad layout), 1 when nothing
meets the target (one line: the best it can do and the GPUs the target needs) or measuring failed.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from orchestrator.advisor.measurements import AdvisorError, Measurements, load_measurements, save_measurements
from orchestrator.advisor.predict import InstanceModel, Prediction, cpu_model, mig_model, predict
from orchestrator.cli.output import DEFAULT_CONFIG, ConfigOption, console, fail

DEFAULT_MEASUREMENTS = Path("measurements.json")


def bench_command(
    profile: Annotated[bool, typer.Option("--profile", help="Measure each instance type present here.")] = False,
    config: ConfigOption = DEFAULT_CONFIG,
    out: Annotated[Path, typer.Option("--out", "-o", help="The measurements file to write.")] = DEFAULT_MEASUREMENTS,
    sample: Annotated[
        Path | None, typer.Option(help='Request bodies, one JSON per line ({"input": [...]}), to draw requests from.')
    ] = None,
    texts_per_request: Annotated[str, typer.Option(help="MEAN or MEAN:CV (without --sample).")] = "16",
    tokens_per_text: Annotated[str, typer.Option(help="MEAN or MEAN:CV (without --sample).")] = "24:0.5",
    requests: Annotated[int, typer.Option(min=4, help="Requests at saturation, per type.")] = 120,
    low_load_requests: Annotated[int, typer.Option(min=4, help="Requests one at a time, per type.")] = 60,
    clients: Annotated[int, typer.Option(min=1, help="Requests kept outstanding at saturation.")] = 8,
    pool_threads: Annotated[list[int] | None, typer.Option(help="CPU pool sizes to measure (repeat).")] = None,  # noqa: UP007
    served: Annotated[
        bool,
        typer.Option("--served/--no-served", help="Also measure served/in-process with one orchestrator up (CPU)."),
    ] = True,
) -> None:
    """Measure throughput at saturation and latency at low load for each instance type here; write them to --out."""
    from orchestrator.advisor.profiling import ProfileSettings, profile_machine, served_check
    from orchestrator.advisor.workload import Workload, load_sample, parse_spread
    from orchestrator.hardware.probe import probe_topology

    if not profile:
        raise fail("bench measures instance types with --profile (the throughput benchmark is scripts/bench.py)", 2)
    try:
        if sample is not None:
            workload = load_sample(sample)
        else:
            workload = Workload(
                parse_spread(texts_per_request, "--texts-per-request"),
                parse_spread(tokens_per_text, "--tokens-per-text"),
            )
        settings = ProfileSettings(low_load_requests, requests, clients, tuple(pool_threads or (1,)))
        topology = probe_topology()
        with console.status("measuring...") as status:
            measurements = profile_machine(
                config, topology, workload, settings, lambda label: status.update(f"measuring {label} in-process...")
            )
            if served and not topology.gpus:
                status.update("measuring served/in-process through orchestrator up...")
                check = served_check(measurements, config, workload, requests, clients)
                measurements = Measurements(**{**measurements.__dict__, "served": check})
    except AdvisorError as error:
        raise fail(error.message, 2 if "cannot read" in error.message or "MEAN" in error.message else 1) from None
    save_measurements(measurements, out)
    table = Table(
        title=f"{measurements.model_name}: measured on {measurements.machine['hostname']}", title_justify="left"
    )
    for column in ("type", "req/s at saturation", "texts/s", "alone mean ms", "alone p99 ms"):
        table.add_column(column, justify="left" if column == "type" else "right")
    for row in measurements.types:
        table.add_row(
            f"{row.type}{f' ({row.board})' if row.board else ''}",
            f"{row.saturation_rps:.2f}",
            f"{row.texts_per_s:.1f}",
            f"{row.low_load_mean_ms:.1f}",
            f"{row.low_load_p99_ms:.1f}",
        )
    console.print(table)
    if measurements.served is not None:
        console.print(
            f"served/in-process {measurements.served.ratio:.2f}, +{measurements.served.extra_ms:.1f} ms "
            f"per request ({measurements.served.how})"
        )
    console.print(f"written to {out}")


def advise_command(
    target_rps: Annotated[float, typer.Option("--target-rps", help="Requests/s to sustain.")],
    p99_ms: Annotated[float, typer.Option("--p99-ms", help="p99 latency bound at that rate, ms.")],
    gpu: Annotated[str | None, typer.Option(help='The GPU model, e.g. "H100 80GB", "A100-80GB", "H200".')] = None,
    measurements_path: Annotated[
        Path, typer.Option("--measurements", "-m", help="What bench --profile wrote.")
    ] = DEFAULT_MEASUREMENTS,
    model: Annotated[str | None, typer.Option(help="The model to advise for (default: the measured one).")] = None,
    layout: Annotated[
        str | None, typer.Option(help='Predict this layout only, e.g. "cpu-1t x2" or "3g.40gb + 1g.10gb x4".')
    ] = None,
    max_gpus: Annotated[int, typer.Option(min=1, help="Search up to this many GPUs.")] = 32,
    top: Annotated[int, typer.Option(min=1, help="Layouts to print.")] = 3,
    write_configs: Annotated[
        Path | None, typer.Option(help="Write mig-parted.yaml and orchestrator.yaml for the first layout here.")
    ] = None,
) -> None:
    """Print the cheapest layouts (fewest GPUs, then most headroom) that serve --target-rps at --p99-ms."""
    from orchestrator.advisor.layouts import board_named
    from orchestrator.advisor.search import Target, advise, best_effort_line

    try:
        measurements = load_measurements(measurements_path, model)
        if layout is not None:
            instances = parse_layout(layout, measurements, gpu)
            _print_predictions([("given", predict(instances, target_rps, p99_ms))], measurements)
            return
        if gpu is None:
            raise AdvisorError("--gpu is needed to search layouts (or --layout to predict one)")
        board = board_named(gpu)
        advice = advise(
            Target(measurements.model_name, target_rps, p99_ms),
            board,
            measurements,
            measurements.model.get("memory_mb"),
            max_gpus,
            top,
        )
    except AdvisorError as error:
        raise fail(error.message, 2) from None
    console.print(
        f"[bold]{measurements.model_name} on {board.model}: {target_rps:,.0f} req/s at p99 {p99_ms:g} ms[/bold]"
    )
    for line in advice.reasoning:
        console.print(f"  {line}")
    if not advice.choices:
        raise fail(best_effort_line(advice), 1)
    _print_predictions([(f"{len(c.gpus)} GPU(s): {c.name}", c.prediction) for c in advice.choices], measurements)
    console.print(f"advised in {advice.seconds:.1f} s ({advice.simulations} simulations)")
    if write_configs is not None:
        _write_configs(write_configs, board, advice.choices[0].gpus, measurements, advice.choices[0].name)


def _print_predictions(rows: list[tuple[str, Prediction]], measurements: Measurements) -> None:
    table = Table(title_justify="left")
    for column in ("layout", "throughput req/s", "utilisation", "p50 ms", "p99 ms", "headroom", "limit"):
        table.add_column(column, justify="left" if column in ("layout", "limit") else "right")
    for name, p in rows:
        p99 = "saturated" if math.isinf(p.p99_ms) else f"{p.p99_ms:,.1f}"
        p50 = "-" if math.isinf(p.p50_ms) else f"{p.p50_ms:,.1f}"
        mark = " (estimated)" if p.estimated else ""
        table.add_row(
            f"{name}{mark}", f"{p.capacity_rps:,.1f}", f"{p.utilisation:.0%}", p50, p99, f"{p.headroom:+.0%}", p.limit
        )
    console.print(table)
    _, _, measured = measurements.served_ratio()
    if not measured and any(t.source == "in-process" for t in measurements.types):
        console.print("note: served/in-process ratio assumed (0.88): measure it with bench --profile --served")


def parse_layout(text: str, measurements: Measurements, gpu: str | None) -> list[InstanceModel]:
    """``"cpu-1t x2 + 3g.40gb"`` -> instance models; MIG profiles need ``gpu``. Raises AdvisorError."""
    from orchestrator.advisor.layouts import board_named

    instances: list[InstanceModel] = []
    for part in text.split("+"):
        match = re.fullmatch(r"\s*(\S+?)(?:\s*x\s*(\d+))?\s*", part)
        if match is None:
            raise AdvisorError(f"--layout: cannot read {part.strip()!r} (write TYPE or TYPE xN, joined by +)")
        name, count = match.group(1), int(match.group(2) or 1)
        row = measurements.by_type(name)
        if row is not None and row.kind == "cpu":
            instances += [cpu_model(row, measurements)] * count
            continue
        if gpu is None:
            raise AdvisorError(f"--layout: {name!r} is no measured CPU pool; for a MIG profile give --gpu")
        board = board_named(gpu)
        profile = next((p for p in board.profiles() if p.name == name), None)
        if profile is None:
            raise AdvisorError(f"--layout: {board.model} has no profile {name!r}")
        instances += [mig_model(board, profile, measurements)] * count
    return instances


def _write_configs(folder: Path, board, gpus, measurements: Measurements, name: str) -> None:  # type: ignore[no-untyped-def]
    from orchestrator.advisor.handoff import mig_parted_config, orchestrator_config, to_yaml

    folder.mkdir(parents=True, exist_ok=True)
    config_name = "advised-" + re.sub(r"[^a-z0-9]+", "-", gpus[0].name.lower()).strip("-")
    comment = f"orchestrator advise: {name} on {board.model}"
    (folder / "mig-parted.yaml").write_text(
        to_yaml(
            mig_parted_config(board, gpus, config_name),
            f"{comment}\nsudo nvidia-mig-parted apply -f mig-parted.yaml -c {config_name}",
        )
    )
    (folder / "orchestrator.yaml").write_text(
        to_yaml(orchestrator_config(gpus, measurements), f"{comment}\norchestrator plan --config orchestrator.yaml")
    )
    console.print(f"wrote {folder / 'mig-parted.yaml'} (config {config_name}) and {folder / 'orchestrator.yaml'}")
