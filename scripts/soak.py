"""Soak: a steady load for many minutes, optionally killing a replica now and then, watching errors and memory.

Starts ``orchestrator up`` (2 CPU pools by default), keeps ``--clients`` clients sending requests of mixed-length
texts, and every ``--window`` seconds records throughput, p50/p99, non-200 answers and the resident memory of the
whole service (the ``up`` process and every process under it: Ray, the replicas). With ``--kill-every M`` a replica
process is killed (SIGKILL) every M minutes: the front door must retry its requests, so the error count stays 0.

With ``--hostile-from M`` the hold issue's attacks run from minute M on beside the normal clients (oversized and
quote-filled headers, slowloris and silent connections, a huge declared body, TLS garbage): the windows before are
the baseline the normal clients' errors and p99 are compared with.

Usage: ``python scripts/soak.py [--minutes 10] [--clients 8] [--kill-every 3] [--hostile-from 5]
[--markdown docs/reliability.md]``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from scripts.bench import free_port, running_service, write_config  # noqa: E402
from tests.corpus import sentences  # noqa: E402

console = Console(highlight=False)


def service_rss_mib(config: Path) -> float:
    """Resident memory of the ``up`` process started with ``config`` and all its descendants, in MiB."""
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        if str(config) in " ".join(process.info["cmdline"] or []):
            total = 0
            for member in [process, *process.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += member.memory_info().rss
            return total / 2**20
    return float("nan")


async def hostile_clients(host: str, port: int, stop: asyncio.Event, counts: collections.Counter[str]) -> None:
    """The hold issue's attacks, all at once and bounded, until ``stop``: a 540 KB header of quotes every 0.5 s,
    100 slowloris and 500 silent connections kept open, a 100 MB body declared and a TLS hello sent every second."""

    async def send(payload: bytes, kind: str, wait_answer: bool = True) -> None:
        with contextlib.suppress(OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
            try:
                writer.write(payload)
                await writer.drain()
                if wait_answer:
                    line = await asyncio.wait_for(reader.readline(), 10)
                    counts[f"{kind} {line.split(b' ')[1].decode() if line.count(b' ') else 'closed'}"] += 1
            finally:
                writer.close()

    async def every(seconds: float, payload: bytes, kind: str) -> None:
        while not stop.is_set():
            await send(payload, kind)
            await asyncio.sleep(seconds)

    async def held(count: int, first_bytes: bytes, kind: str) -> None:
        connections: list[asyncio.StreamWriter] = []
        while not stop.is_set():
            connections = [writer for writer in connections if not writer.is_closing()]
            while len(connections) < count and not stop.is_set():
                try:
                    _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
                except (OSError, asyncio.TimeoutError):
                    break
                writer.write(first_bytes)
                connections.append(writer)
                counts[f"{kind} opened"] += 1
            for writer in connections:
                if first_bytes:
                    writer.write(b"X")  # one more header byte: a slowloris client never finishes
            await asyncio.sleep(1.0)
        for writer in connections:
            writer.close()

    post = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n"
    quotes = post + b"X-Junk: " + b'"' * 540_000 + b"\r\nContent-Length: 2\r\n\r\n{}"
    huge_body = post + b"Content-Length: 100000000\r\n\r\n" + b"x" * 65536
    tls_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)) + b"\r\n\r\n"
    await asyncio.gather(
        every(0.5, quotes, "quotes"),
        every(1.0, huge_body, "huge body"),
        every(1.0, tls_hello, "tls hello"),
        held(100, b"GET /health HTTP/1.1\r\nX-A: ", "slowloris"),
        held(500, b"", "silent"),
    )


def kill_one_replica() -> int | None:
    """SIGKILL one Serve replica process; returns its pid (None if none was found)."""
    import psutil

    replicas = [
        process
        for process in psutil.process_iter(["cmdline", "name"])
        if "ServeReplica" in " ".join(process.info["cmdline"] or []) + (process.info["name"] or "")
    ]
    if not replicas:
        return None
    victim = random.choice(replicas)
    os.kill(victim.pid, signal.SIGKILL)
    return victim.pid


async def soak(url: str, config: Path, texts: list[str], args: argparse.Namespace) -> list[dict[str, object]]:
    import aiohttp

    windows: list[dict[str, object]] = []
    latencies: list[float] = []
    statuses: collections.Counter[int] = collections.Counter()
    texts_done = 0
    stop = asyncio.Event()
    hostile_on = asyncio.Event()
    hostile_counts: collections.Counter[str] = collections.Counter()
    end = time.monotonic() + args.minutes * 60
    async with aiohttp.ClientSession() as session:

        async def client(k: int) -> None:
            nonlocal texts_done
            rng = random.Random(k)
            while not stop.is_set():
                size = rng.randint(1, args.texts_per_request)
                start = rng.randrange(len(texts) - size)
                began = time.perf_counter()
                try:
                    async with session.post(
                        f"{url}/v1/embeddings", json={"input": texts[start : start + size], "encoding_format": "base64"}
                    ) as response:
                        await response.read()
                        statuses[response.status] += 1
                        if response.status == 200:
                            texts_done += size
                except aiohttp.ClientError:
                    statuses[0] += 1  # connection-level failure
                latencies.append(time.perf_counter() - began)

        async def recorder() -> None:
            nonlocal texts_done
            next_kill = time.monotonic() + args.kill_every * 60 if args.kill_every else None
            window_began = time.monotonic()
            kills = 0
            while time.monotonic() < end:
                await asyncio.sleep(1.0)
                if next_kill is not None and time.monotonic() >= next_kill:
                    if await asyncio.to_thread(kill_one_replica) is not None:
                        kills += 1
                    next_kill += args.kill_every * 60
                if time.monotonic() - window_began < args.window:
                    continue
                elapsed = time.monotonic() - window_began
                ordered = sorted(latencies) or [float("nan")]
                windows.append(
                    {
                        "minute": (time.monotonic() - (end - args.minutes * 60)) / 60,
                        "emb_per_s": texts_done / elapsed,
                        "p50_ms": statistics.median(ordered) * 1000,
                        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
                        "ok": statuses[200],
                        "errors": sum(count for status, count in statuses.items() if status != 200),
                        "error_codes": dict(sorted((s, c) for s, c in statuses.items() if s != 200)),
                        "kills": kills,
                        "rss_mib": await asyncio.to_thread(service_rss_mib, config),
                        "hostile": dict(sorted(hostile_counts.items())) if hostile_on.is_set() else {},
                    }
                )
                hostile_counts.clear()
                row = windows[-1]
                console.print(
                    f"minute {row['minute']:.1f}: {row['emb_per_s']:.0f} emb/s, p50 {row['p50_ms']:.0f} ms, "
                    f"p99 {row['p99_ms']:.0f} ms, errors {row['errors']}, kills {kills}, RSS {row['rss_mib']:.0f} MiB"
                )
                latencies.clear()
                statuses.clear()
                texts_done = 0
                kills = 0
                window_began = time.monotonic()
            stop.set()

        async def hostile() -> None:
            if args.hostile_from is None:
                return
            await asyncio.sleep(args.hostile_from * 60)
            if not stop.is_set():
                hostile_on.set()
                await hostile_clients("127.0.0.1", int(url.rsplit(":", 1)[1]), stop, hostile_counts)

        await asyncio.gather(recorder(), hostile(), *(client(k) for k in range(args.clients)))
    return windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=30.0, help="seconds per reported window")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--texts-per-request", type=int, default=16, help="each request sends 1..N texts")
    parser.add_argument("--kill-every", type=float, default=0.0, help="minutes between replica kills (0: none)")
    parser.add_argument("--backend", choices=["torch", "onnx"], default="onnx")
    parser.add_argument(
        "--hostile-from", type=float, default=None, help="minute from which hostile clients run beside the normal ones"
    )
    parser.add_argument("--markdown", type=Path, help="append the results to this file")
    args = parser.parse_args()
    texts = sentences(2048, seed=5)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "soak.yaml"
        write_config(config, port, 2, 1, 16, args.backend)
        with running_service(config, url, "soak"):
            windows = asyncio.run(soak(url, config, texts, args))
    table = Table(title=f"Soak: {args.minutes:g} min, {args.clients} clients, kill every {args.kill_every:g} min")
    for column in ("minute", "emb/s", "p50 ms", "p99 ms", "ok", "errors", "kills", "RSS MiB", "hostile answers"):
        table.add_column(column, justify="right")
    lines = []
    for row in windows:
        errors = f"{row['errors']} {row['error_codes']}" if row["errors"] else "0"
        cells = (
            f"{row['minute']:.1f}",
            f"{row['emb_per_s']:.0f}",
            f"{row['p50_ms']:.0f}",
            f"{row['p99_ms']:.0f}",
            str(row["ok"]),
            errors,
            str(row["kills"]),
            f"{row['rss_mib']:.0f}",
            ", ".join(f"{kind}: {count}" for kind, count in row["hostile"].items()) or "-",
        )
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    if args.markdown:
        header = (
            "| minute | emb/s | p50 ms | p99 ms | ok | errors | kills | RSS MiB | hostile answers |\n"
            + "|---" * 9
            + "|"
        )
        with args.markdown.open("a") as out:
            out.write(
                f"\n#### Soak run of {time.strftime('%Y-%m-%d %H:%M')} ({args.backend}, {args.minutes:g} min, "
                f"{args.clients} clients, a replica killed every {args.kill_every:g} min, hostile clients from minute "
                f"{args.hostile_from}; `scripts/soak.py`)\n\n"
            )
            out.write(header + "\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
