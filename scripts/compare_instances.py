"""The seed's table reproduced: one instance vs N instances on the same hardware, at concurrency 1 and 4.

The seed (section 5.1) compares one model instance against several MIG instances on one GPU: mean latency,
throughput and utilisation at 1 and 4 concurrent clients. Here the same comparison runs on whatever this machine
has: without a GPU, one CPU pool with all the cores against one pool per core (same cores in total), each started
with ``orchestrator up``. Utilisation is the instances' own busy fraction (the balancer's load input), sampled
from ``/instances`` during each level.

Usage: ``python scripts/compare_instances.py [--requests 60] [--texts-per-request 4] [--png docs/instances.png]
[--markdown docs/benchmarks.md]``. Loopback traffic only, bounded request counts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from scripts.bench import free_port, running_service, write_config  # noqa: E402
from tests.corpus import sentences  # noqa: E402

console = Console(highlight=False)


async def level(url: str, texts: list[str], clients: int, per_request: int, requests: int) -> dict[str, float]:
    """Drive ``clients`` concurrent clients; sample the instances' load meanwhile."""
    import aiohttp

    latencies: list[float] = []
    loads: list[float] = []
    counter = iter(range(requests))
    done = asyncio.Event()
    async with aiohttp.ClientSession() as session:

        async def client() -> None:
            for n in counter:
                start = (n * per_request) % (len(texts) - per_request)
                began = time.perf_counter()
                body = {"input": texts[start : start + per_request], "encoding_format": "base64"}
                async with session.post(f"{url}/v1/embeddings", json=body) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"status {response.status}")
                latencies.append(time.perf_counter() - began)

        async def sampler() -> None:
            while not done.is_set():
                await asyncio.sleep(0.5)
                async with session.get(f"{url}/instances") as response:
                    view = await response.json()
                values = [s["load"] for s in view["instance_stats"].values() if s["load"] is not None]
                if values:
                    loads.append(sum(values) / len(values))

        sampling = asyncio.create_task(sampler())
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
        done.set()
        await sampling
    return {
        "mean_ms": statistics.mean(latencies) * 1000,
        "qps": requests / elapsed,
        "utilisation": statistics.mean(loads[1:] or loads or [0.0]),
    }


def run_layout(name: str, pools: int, threads: int, args: argparse.Namespace, texts: list[str]) -> list[tuple]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "layout.yaml"
        write_config(config, port, pools, threads, 16, args.backend)
        with running_service(config, url, name):
            asyncio.run(level(url, texts, 4, args.texts_per_request, 12))  # warm up
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task(name, total=len(args.concurrency))
                for clients in args.concurrency:
                    result = asyncio.run(level(url, texts, clients, args.texts_per_request, args.requests))
                    rows.append((name, clients, result))
                    progress.advance(task)
    return rows


def plot(rows: list[tuple], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    labels = [f"{name.split(' x ')[0]}\n{clients} client(s)" for name, clients, _ in rows]
    figure, axes = plt.subplots(1, 3, figsize=(12, 4))
    for axis, key, title in zip(
        axes,
        ("mean_ms", "qps", "utilisation"),
        ("mean latency (ms)", "throughput (requests/s)", "utilisation"),
        strict=True,
    ):
        axis.bar(labels, [result[key] for _, _, result in rows], color=["#7a9cc6", "#7a9cc6", "#e0a040", "#e0a040"])
        axis.set_title(title)
        axis.tick_params(axis="x", labelsize=8)
    figure.suptitle("One instance vs one instance per core (same cores)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=60, help="requests per level")
    parser.add_argument("--texts-per-request", type=int, default=4)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--backend", choices=["torch", "onnx"], default="onnx")
    parser.add_argument("--png", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    texts = sentences(512, seed=13)
    rows = run_layout(f"1 instance x {cores} threads", 1, cores, args, texts)
    rows += run_layout(f"{cores} instances x 1 thread", cores, 1, args, texts)
    table = Table(title=f"One vs {cores} instances, {args.backend}, requests of {args.texts_per_request} texts")
    for column in ("deployment", "clients", "mean latency ms", "requests/s", "utilisation"):
        table.add_column(column, justify="right")
    lines = []
    for name, clients, result in rows:
        cells = (name, str(clients), f"{result['mean_ms']:.0f}", f"{result['qps']:.1f}", f"{result['utilisation']:.0%}")
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    if args.png and plot(rows, args.png):
        console.print(f"plot: {args.png}")
    if args.markdown:
        with args.markdown.open("a") as handle:
            handle.write(
                "\n".join(
                    [
                        "",
                        f"### The seed's table, reproduced on {cores} CPU cores ({time.strftime('%Y-%m-%d %H:%M')})",
                        "",
                        f"`python scripts/compare_instances.py` ({args.backend}, requests of {args.texts_per_request} "
                        "texts; utilisation = the instances' mean busy fraction while loaded):",
                        "",
                        "| deployment | clients | mean latency ms | requests/s | utilisation |",
                        "|---|---|---|---|---|",
                        *lines,
                    ]
                )
                + "\n"
            )


if __name__ == "__main__":
    main()
