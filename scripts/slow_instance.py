"""A slow instance in a real service: does the balancer steer work away from it?

Starts ``orchestrator up`` with two CPU pools (one core each), drives it with concurrent clients, then makes one
pool slow without telling anyone: a busy process pinned to that pool's core, at the replica's own nice level, takes
about half of the core. The instances still declare equal capacity, so only the measured load and the queue can
steer. For each balancer preset it reports throughput, p50/p99 and each instance's share of requests before and
while one instance is slow; an even split (what round-robin or random would do) is the reference.

Usage: ``python scripts/slow_instance.py [--presets measured seed] [--clients 8] [--requests 160]
[--markdown docs/reliability.md]``. Loopback traffic only; about a minute per preset.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from scripts.bench import drive, free_port, running_service, write_config  # noqa: E402
from tests.corpus import sentences  # noqa: E402

console = Console(highlight=False)
SLOW_CORE = 1  # pools take cores in rank order: pool-1 runs on core 1


def replica_nice_on(core: int) -> int:
    """The nice level of the replica process pinned to ``core`` (Ray starts workers niced)."""
    import psutil

    for process in psutil.process_iter(["name", "cmdline"]):
        title = " ".join(process.info["cmdline"] or []) + (process.info["name"] or "")
        with contextlib.suppress(psutil.Error, OSError):
            # The replica pins the threads that compute (its main thread stays Ray's): look at every thread.
            if "ServeReplica" in title and any(os.sched_getaffinity(t.id) == {core} for t in process.threads()):
                return int(process.nice())
    raise SystemExit(f"no replica pinned to core {core} found")


@contextlib.contextmanager
def busy_process(core: int, nice: int) -> Iterator[None]:
    """A process spinning on ``core`` at ``nice``: takes about half of that core from a replica at the same level."""
    code = f"import os; os.sched_setaffinity(0, {{{core}}}); os.nice({nice})\nwhile True: pass"
    hog = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(1.0)
        yield
    finally:
        hog.kill()
        hog.wait()


def run_preset(preset: str, args: argparse.Namespace, texts: list[str]) -> dict[str, dict[str, object]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "slow.yaml"
        write_config(config, port, 2, 1, 16, args.backend)
        config.write_text(config.read_text() + f"balancer:\n  preset: {preset}\n")
        with running_service(config, url, preset):
            asyncio.run(drive(url, texts, 4, args.texts_per_request, 16))  # warm both replicas
            with console.status(f"[{preset}] both instances at full speed..."):
                even = asyncio.run(drive(url, texts, args.clients, args.texts_per_request, args.requests))
            nice = replica_nice_on(SLOW_CORE)
            with (
                busy_process(SLOW_CORE, nice),
                console.status(f"[{preset}] pool-1 slowed (core {SLOW_CORE} shared)..."),
            ):
                slowed = asyncio.run(drive(url, texts, args.clients, args.texts_per_request, args.requests))
    return {"equal speed": even, "pool-1 slowed": slowed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", choices=["measured", "seed"], default=["measured", "seed"])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=160)
    parser.add_argument("--texts-per-request", type=int, default=16)
    parser.add_argument("--backend", choices=["torch", "onnx"], default="onnx")
    parser.add_argument("--markdown", type=Path, help="append the results to this file")
    args = parser.parse_args()
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs at least 2 cores")
    texts = sentences(1024, seed=23)
    table = Table(title=f"2 pools x 1 thread, {args.clients} clients, requests of {args.texts_per_request} texts")
    for column in ("preset", "condition", "emb/s", "p50 ms", "p99 ms", "pool-0 share", "pool-1 share"):
        table.add_column(column, justify="right")
    lines = []
    for preset in args.presets:
        for condition, result in run_preset(preset, args, texts).items():
            shares = result["shares"]
            cells = (
                preset,
                condition,
                f"{result['emb_per_s']:.1f}",
                f"{result['p50_ms']:.0f}",
                f"{result['p99_ms']:.0f}",
                f"{shares.get('pool-0', 0.0):.2f}",  # type: ignore[union-attr]
                f"{shares.get('pool-1', 0.0):.2f}",  # type: ignore[union-attr]
            )
            table.add_row(*cells)
            lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    if args.markdown:
        header = "| preset | condition | emb/s | p50 ms | p99 ms | pool-0 share | pool-1 share |\n" + "|---" * 7 + "|"
        stamp = time.strftime("%Y-%m-%d %H:%M")
        with args.markdown.open("a") as out:
            out.write(f"\n#### Slow instance run of {stamp} ({args.backend}, `scripts/slow_instance.py`)\n\n{header}\n")
            out.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
