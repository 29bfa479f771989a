"""The study's tables as plain data, rendered to the terminal (rich) or to markdown by the caller."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from scripts.simulation.model import ModelParams
from scripts.simulation.policies import PolicySpec
from scripts.simulation.study import BASELINES, SEED_WEIGHTS, Cell, relative_p99

Cells = dict[tuple[PolicySpec, float], Cell]


@dataclass(frozen=True)
class TableData:
    """A titled table of strings; ``bold`` lists the row indexes to emphasise."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    bold: tuple[int, ...] = ()


def ms(value: float) -> str:
    """Milliseconds, with a precision that suits their size."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def ratio(value: float) -> str:
    """A ratio such as ``2.31x``."""
    return f"{value:.2f}x"


def describe_model(params: ModelParams) -> str:
    """One line: the layout, the service times and the staleness of the load signal."""
    slices = " + ".join(
        f"{s.profile} ({s.sms} SMs{f', speed x{s.speed:g}' if s.speed != 1 else ''}, "
        f"{ms(params.mean_service_s(s) * 1000)} ms)"
        for s in params.layout
    )
    spread = f"log-normal sizes, cv {params.cv:g}" if params.distribution == "lognormal" else "exponential sizes"
    return (
        f"{slices}; {spread}; capacity {params.total_rate():.1f} req/s at 100% load; load reported every "
        f"{params.stats_period_s:g} s over a {params.load_window_s:g} s window"
    )


def policy_table(cells: Cells, loads: Sequence[float], best: PolicySpec, layout_names: Sequence[str]) -> TableData:
    """Every policy at every load: p50, p99 (mean of seeds, and their range), throughput, where requests went."""
    specs = [SEED_WEIGHTS] + ([best] if best != SEED_WEIGHTS else []) + list(BASELINES)
    rows: list[list[str]] = []
    bold: list[int] = []
    for load in loads:
        present = [spec for spec in specs if (spec, load) in cells]
        lowest = min(cells[(spec, load)].p99_ms for spec in present)
        for spec in present:
            cell = cells[(spec, load)]
            if cell.p99_ms == lowest:
                bold.append(len(rows))
            rows.append(
                [
                    f"{load:.0%}",
                    spec.label + (" (seed)" if spec == SEED_WEIGHTS else " (best)" if spec == best else ""),
                    ms(cell.p50_ms),
                    ms(cell.p99_ms),
                    f"{ms(cell.p99_min_ms)}-{ms(cell.p99_max_ms)}",
                    f"{cell.throughput:.1f}",
                    f"{cell.throughput / cell.offered_rate:.3f}" + (" saturated" if cell.saturated else ""),
                    "/".join(f"{share * 100:.0f}" for share in cell.shares),
                ]
            )
    return TableData(
        title=(
            "Policies (latency in ms, mean over seeds; p99 range: lowest-highest seed; routed: % of requests to "
            + " / ".join(layout_names)
            + ")"
        ),
        headers=[
            "load",
            "policy",
            "p50",
            "p99",
            "p99 range",
            "req/s",
            "of offered",
            "routed %",
        ],
        rows=rows,
        bold=tuple(bold),
    )


def sweep_table(cells: Cells, sweep_loads: Sequence[float], best: PolicySpec) -> TableData:
    """Each swept weight pair at each sweep load, and its p99 relative to the best pair's."""
    specs = sorted(
        {spec for spec, _ in cells if spec.name == "weighted" and all((spec, load) in cells for load in sweep_loads)},
        key=lambda spec: spec.load_weight,
    )
    rows = []
    for spec in specs:
        row = [f"{spec.load_weight:g} / {spec.queue_weight:g}"]
        for load in sweep_loads:
            row += [ms(cells[(spec, load)].p50_ms), ms(cells[(spec, load)].p99_ms)]
        row.append(ratio(relative_p99(cells, spec, sweep_loads)))
        rows.append(row)
    headers = ["load_weight / queue_weight"]
    for load in sweep_loads:
        headers += [f"p50 @{load:.0%}", f"p99 @{load:.0%}"]
    headers.append("p99 vs best (geo. mean)")
    return TableData(
        title="Weight sweep of the weighted policy (ms)",
        headers=headers,
        rows=rows,
        bold=tuple(i for i, spec in enumerate(specs) if spec == best),
    )


def headline_table(cells: Cells, loads: Sequence[float], best: PolicySpec) -> TableData:
    """Seed weights against the best weights and against least-outstanding, as p50 and p99 ratios."""
    least = PolicySpec("least_outstanding")
    rows = []
    for load in loads:
        seed, top = cells.get((SEED_WEIGHTS, load)), cells.get((best, load))
        if seed is None or top is None:
            continue
        row = [f"{load:.0%}", ratio(seed.p50_ms / top.p50_ms), ratio(seed.p99_ms / top.p99_ms)]
        other = cells.get((least, load))
        row += [ratio(top.p99_ms / other.p99_ms)] if other else ["-"]
        rows.append(row)
    return TableData(
        title=f"Headline: seed {SEED_WEIGHTS.label} against best {best.label}",
        headers=["load", "p50 seed / best", "p99 seed / best", "p99 best / least_outstanding"],
        rows=rows,
    )


def _front_door_rows(
    cells: Cells, variants: Sequence[PolicySpec], counts: Sequence[int], views: Sequence[str], loads: Sequence[float]
) -> list[tuple[str, PolicySpec, float, list[Cell | None]]]:
    """(view, variant, load, the cell at each count of front doors) for every row of the front-door tables."""
    rows = []
    for view in views:
        for variant in variants:
            for load in loads:
                at = [cells.get((replace(variant, front_doors=n, view=view), load)) for n in counts]
                if any(at):
                    rows.append((view, variant, load, at))
    return rows


def front_door_table(
    cells: Cells, variants: Sequence[PolicySpec], counts: Sequence[int], views: Sequence[str], loads: Sequence[float]
) -> TableData:
    """p99 with each count of front doors, and its ratio to the first count (one front door)."""
    rows = []
    for view, variant, load, at in _front_door_rows(cells, variants, counts, views, loads):
        base = at[0]
        row = [view, variant.label, f"{load:.0%}"]
        for cell in at:
            if cell is None:
                row.append("-")
                continue
            text = ms(cell.p99_ms) + (" saturated" if cell.saturated else "")
            row.append(text if base is None or cell is base else f"{text} ({ratio(cell.p99_ms / base.p99_ms)})")
        rows.append(row)
    return TableData(
        title=(
            f"p99 latency (ms) with N front doors, mean over seeds; in brackets, against N = {counts[0]} with the "
            "same policy and view"
        ),
        headers=["view", "policy", "load", *(f"N = {n}" for n in counts)],
        rows=rows,
    )


def herding_table(
    cells: Cells,
    variants: Sequence[PolicySpec],
    counts: Sequence[int],
    views: Sequence[str],
    loads: Sequence[float],
    layout_names: Sequence[str],
) -> TableData:
    """Arrival dispersion at the slices for each count of front doors (above 1: herding), p50, shares at the last."""
    rows = []
    for view, variant, load, at in _front_door_rows(cells, variants, counts, views, loads):
        row = [view, variant.label, f"{load:.0%}"]
        row += [f"{cell.dispersion:.2f}" if cell else "-" for cell in at]
        row.append(" / ".join(ms(cell.p50_ms) if cell else "-" for cell in at))
        last = at[-1]
        row.append("/".join(f"{share * 100:.0f}" for share in last.shares) if last else "-")
        rows.append(row)
    return TableData(
        title=(
            "Herding: index of dispersion of the requests each slice receives per 0.1 s (Poisson split = 1; above 1: "
            "front doors pile onto the same slice together), p50 (ms) and % routed to "
            + " / ".join(layout_names)
            + f" with N = {counts[-1]}"
        ),
        headers=[
            "view",
            "policy",
            "load",
            *(f"dispersion N = {n}" for n in counts),
            "p50 N = " + ", ".join(str(n) for n in counts),
            f"routed % N = {counts[-1]}",
        ],
        rows=rows,
    )


def to_markdown(table: TableData) -> list[str]:
    """A markdown table (title as a bold line above it; emphasised rows in bold)."""
    lines = [f"**{table.title}**", "", "| " + " | ".join(table.headers) + " |", "|" + "---|" * len(table.headers)]
    for i, row in enumerate(table.rows):
        cells = [f"**{c}**" for c in row] if i in table.bold else row
        lines.append("| " + " | ".join(cells) + " |")
    return lines
