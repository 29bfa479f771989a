"""Balancer study: a seeded discrete-event simulation of routing over unequal MIG slices, no Ray.

Drives the real ``orchestrator.balancer.rank`` (policy ``weighted``, fed as ``orchestrator/serving/router.py`` feeds
it: a stale reported load, a fresh outstanding count, capacity from the slice's SMs) and compares it with round-robin,
random, power-of-two-choices and least-outstanding on an A100-40GB cut 3g + 2g + 1g + 1g, at 50, 80 and 95% of
the GPU's capacity; it also sweeps the weighted policy's weights (load_weight 0..1, queue_weight = 1 - load_weight)
at 80 and 95% and names the pair with the lowest p99. The model and its assumptions are in
``scripts/simulation/model.py`` and ``docs/balancer-study.md``.

With ``--front-doors 1 2 4 8`` it runs the many-front-doors study instead (``scripts/simulation/front_doors.py``):
the default weights with N independent front doors, each counting only its own requests and seeing the replicas'
load on its own answers (``lanes``) or in shared periodic reports (``reports``), ranked as the balancer does now
and as it did before it counted the request being placed, plus a randomised what-if (``--near``).

Usage: ``python scripts/simulate_balancer.py [--requests N] [--seeds K] [--markdown PATH] [--plot PNG]``
or ``python scripts/simulate_balancer.py --front-doors 1 2 4 8 [--views lanes reports] [--markdown PATH]``.
Deterministic: the same arguments give the same numbers, whatever ``--jobs``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from orchestrator.balancer import Weights  # noqa: E402
from scripts.simulation.front_doors import VIEWS  # noqa: E402
from scripts.simulation.model import A100_40GB_3G_2G_1G_1G, LAYOUTS, ModelParams  # noqa: E402
from scripts.simulation.policies import PolicySpec  # noqa: E402
from scripts.simulation.report import (  # noqa: E402
    Cells,
    TableData,
    describe_model,
    front_door_table,
    headline_table,
    herding_table,
    policy_table,
    sweep_table,
    to_markdown,
)
from scripts.simulation.study import (  # noqa: E402
    RunSummary,
    Task,
    best_weights,
    plan_first_pass,
    plan_front_doors,
    plan_second_pass,
    run_tasks,
    summarise,
)

# Piped or captured output gets a width that fits the policy table instead of rich's 80-column default.
console = Console(highlight=False, width=None if Console().is_terminal else 132)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked (loads strictly inside (0, 1): at 1 and above no policy has a steady state)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000, help="requests per run (one policy, load, seed)")
    parser.add_argument("--seeds", type=int, default=3, help="runs per policy and load, seeds 1..K")
    parser.add_argument("--loads", type=float, nargs="+", default=[0.5, 0.8, 0.95], help="fractions of capacity")
    parser.add_argument("--sweep-loads", type=float, nargs="+", default=[0.8, 0.95], help="loads of the sweep")
    parser.add_argument("--service-ms", type=float, default=20.0, help="mean service time on a 1g (14-SM) slice")
    parser.add_argument("--distribution", choices=["lognormal", "exponential"], default="lognormal")
    parser.add_argument("--cv", type=float, default=0.5, help="coefficient of variation of log-normal sizes")
    parser.add_argument(
        "--speeds",
        type=float,
        nargs="+",
        help="real speed of each slice relative to its SMs (default all 1); the router still sizes them by SMs",
    )
    parser.add_argument("--stats-period", type=float, default=0.5, help="seconds between load reports")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="a100", help="GPU cut 3g + 2g + 1g + 1g")
    parser.add_argument(
        "--front-doors",
        type=int,
        nargs="+",
        help="run the many-front-doors study with these counts of front doors (the first is the reference)",
    )
    parser.add_argument("--views", choices=VIEWS, nargs="+", default=list(VIEWS), help="front doors' view of load")
    parser.add_argument(
        "--weights",
        type=float,
        nargs=2,
        default=list(Weights()),
        metavar=("LOAD", "QUEUE"),
        help="weights of the front-door study (default: the balancer's)",
    )
    parser.add_argument(
        "--near",
        type=float,
        default=0.05,
        help="front-door study: also run the what-if choosing at random among scores within this of the best (0: no)",
    )
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    parser.add_argument("--markdown", type=Path, help="append the results as a markdown section to this file")
    parser.add_argument("--plot", type=Path, help="write a PNG of the sweep (only if matplotlib is installed)")
    args = parser.parse_args(argv)
    if args.requests < 100 or args.seeds < 1:
        parser.error("--requests must be >= 100 and --seeds >= 1")
    if args.speeds and (len(args.speeds) != len(A100_40GB_3G_2G_1G_1G) or min(args.speeds) <= 0):
        parser.error(f"--speeds needs {len(A100_40GB_3G_2G_1G_1G)} positive numbers, one per slice")
    if any(not 0 < load < 1 for load in [*args.loads, *args.sweep_loads]):
        parser.error("loads are fractions of capacity, strictly between 0 and 1")
    if args.front_doors and min(args.front_doors) < 1:
        parser.error("--front-doors counts must be >= 1")
    return args


def run_with_progress(tasks: list[Task], jobs: int, progress: Progress, description: str) -> list[RunSummary]:
    """``run_tasks`` with one progress bar advancing per finished run."""
    bar = progress.add_task(description, total=len(tasks))
    return run_tasks(tasks, jobs, on_done=lambda: progress.advance(bar))


def print_table(table: TableData) -> None:
    """A rich table: label columns left and unwrapped, numbers right, emphasised rows in bold green."""
    rich_table = Table(title=table.title, title_justify="left")
    for i, header in enumerate(table.headers):
        label = i == 0 or header == "policy"
        rich_table.add_column(header, justify="left" if label else "right", no_wrap=label)
    for i, row in enumerate(table.rows):
        rich_table.add_row(*row, style="bold green" if i in table.bold else None)
    console.print(rich_table)


def write_plot(path: Path, cells: Cells, sweep_loads: list[float]) -> None:
    """p99 against load_weight at each sweep load; skipped (with a note) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.print(f"[yellow]matplotlib is not installed: no plot written to {path}[/yellow]")
        return
    figure, axes = plt.subplots(figsize=(7, 4))
    for load in sweep_loads:
        specs = sorted((s for s, at in cells if s.name == "weighted" and at == load), key=lambda s: s.load_weight)
        p99s = [cells[(s, load)].p99_ms for s in specs]
        axes.plot([s.load_weight for s in specs], p99s, marker="o", label=f"{load:.0%}")
        least = cells.get((PolicySpec("least_outstanding"), load))
        if least:
            axes.axhline(least.p99_ms, linestyle="--", linewidth=0.8, color=axes.lines[-1].get_color())
    axes.set_xlabel("load_weight (queue_weight = 1 - load_weight)")
    axes.set_ylabel("p99 latency (ms, log)")
    axes.set_yscale("log")
    axes.set_title("Weighted policy p99 by weights (dashed: least_outstanding)")
    axes.legend(title="load")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    console.print(f"plot written to {path}")


def main(argv: list[str] | None = None) -> None:
    """Run the study (first pass: policies and sweep; second: the best weights at the other loads) and report it."""
    args = parse_args(argv)
    layout = LAYOUTS[args.layout]
    if args.speeds:
        layout = tuple(replace(spec, speed=speed) for spec, speed in zip(layout, args.speeds, strict=True))
    params = ModelParams(
        service_ms_1g=args.service_ms,
        distribution=args.distribution,
        cv=args.cv,
        stats_period_s=args.stats_period,
        layout=layout,
    )
    console.print(f"model: {describe_model(params)}")
    if args.front_doors:
        front_doors_study(args, params, argv)
        return
    started = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        first = plan_first_pass(args.loads, args.sweep_loads, args.seeds, args.requests, params)
        runs = run_with_progress(first, args.jobs, progress, "policies and sweep")
        best = best_weights(summarise(runs), args.sweep_loads)
        second = plan_second_pass(best, args.loads, {(r.spec, r.load) for r in runs}, args.seeds, args.requests, params)
        if second:
            runs += run_with_progress(second, args.jobs, progress, f"{best.label} at the other loads")
    elapsed = time.perf_counter() - started
    cells = summarise(runs)

    tables = [
        policy_table(cells, args.loads, best, [s.profile for s in params.layout]),
        sweep_table(cells, args.sweep_loads, best),
        headline_table(cells, args.loads, best),
    ]
    for table in tables:
        print_table(table)
    console.print(
        f"best weights by p99 at {', '.join(f'{x:.0%}' for x in args.sweep_loads)}: [bold]{best.label}[/bold]; "
        f"{len(runs)} runs of {args.requests:,} requests in {elapsed:.0f} s on {args.jobs} process(es)"
    )

    if args.markdown:
        command = "python scripts/simulate_balancer.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        lines = [
            "",
            f"### Run of {time.strftime('%Y-%m-%d %H:%M')} ({os.cpu_count()} cores, {elapsed:.0f} s)",
            "",
            f"`{command.strip()}`: {args.seeds} seed(s) x {args.requests:,} requests per policy and load, the first "
            f"{params.warmup_fraction:.0%} of each run left out.",
            f"Model: {describe_model(params)}.",
            "",
        ]
        for table in tables:
            lines += [*to_markdown(table), ""]
        lines.append(f"Best weights by p99 at {', '.join(f'{x:.0%}' for x in args.sweep_loads)}: **{best.label}**.")
        with args.markdown.open("a") as out:
            out.write("\n".join(lines) + "\n")
        console.print(f"results appended to {args.markdown}")
    if args.plot:
        write_plot(args.plot, cells, args.sweep_loads)


def front_door_variants(args: argparse.Namespace) -> list[PolicySpec]:
    """The weighted policy ranked as the balancer does now (placing 1), as before (placing 0), and the what-if."""
    load_weight, queue_weight = args.weights
    now = PolicySpec("weighted", load_weight, queue_weight)
    variants = [replace(now, placing=0.0), now]
    return variants + ([replace(now, near=args.near)] if args.near > 0 else [])


def front_doors_study(args: argparse.Namespace, params: ModelParams, argv: list[str] | None) -> None:
    """N front doors against one, per view, variant and load; tables to the terminal and, if asked, markdown."""
    variants = front_door_variants(args)
    tasks = plan_front_doors(variants, args.front_doors, args.views, args.loads, args.seeds, args.requests, params)
    started = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        runs = run_with_progress(tasks, args.jobs, progress, "front doors")
    elapsed = time.perf_counter() - started
    cells = summarise(runs)
    names = [s.profile for s in params.layout]
    tables = [
        front_door_table(cells, variants, args.front_doors, args.views, args.loads),
        herding_table(cells, variants, args.front_doors, args.views, args.loads, names),
    ]
    for table in tables:
        print_table(table)
    console.print(f"{len(runs)} runs of {args.requests:,} requests in {elapsed:.0f} s on {args.jobs} process(es)")
    if args.markdown:
        command = "python scripts/simulate_balancer.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        lines = [
            "",
            f"#### Front-door run of {time.strftime('%Y-%m-%d %H:%M')} ({os.cpu_count()} cores, {elapsed:.0f} s)",
            "",
            f"`{command.strip()}`: {args.seeds} seed(s) x {args.requests:,} requests per policy, view, count of "
            f"front doors and load, the first {params.warmup_fraction:.0%} of each run left out.",
            f"Model: {describe_model(params)}.",
            "",
        ]
        for table in tables:
            lines += [*to_markdown(table), ""]
        with args.markdown.open("a") as out:
            out.write("\n".join(lines) + "\n")
        console.print(f"results appended to {args.markdown}")


if __name__ == "__main__":
    main()
