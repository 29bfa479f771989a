"""Replay the front-door attacks of the hold issue against a running service and report what they cost it.

    python scripts/edge_attack.py --url http://127.0.0.1:8000 --pid PID_OF_UP [--api-key KEY]

Attacks, one after another (each bounded in bytes, connections and time; loopback only):
  headers     3 connections each sending 300 MB of one unfinished header line
  quotes      one request with a 540 KB header of '"' (over 1 MiB once JSON-escaped), then normal requests
  silent      N connections that never send a byte (default 6000: past the connection cap on a default config)
  slowloris   200 connections sending one header byte every second
While and after each attack, normal requests are sent and their statuses and latencies reported, with the RSS of
the `up` process (``--pid``) before, at its peak and after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

import psutil


def normal_requests(url: str, api_key: str | None, count: int) -> tuple[list[int], list[float]]:
    statuses, latencies = [], []
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    for n in range(count):
        request = urllib.request.Request(
            f"{url}/v1/embeddings", data=json.dumps({"input": [f"normal text {n}"]}).encode(), headers=headers
        )
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
                statuses.append(response.status)
        except urllib.error.HTTPError as error:
            statuses.append(error.code)
        except OSError:
            statuses.append(0)
        latencies.append((time.perf_counter() - started) * 1000)
    return statuses, latencies


class RssWatch:
    """Samples a process's resident memory every 50 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def header_flood(host: str, port: int, megabytes: int) -> str:
    sock = socket.create_connection((host, port), timeout=10)
    sent = 0
    try:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nX-Flood: ")
        chunk = b"a" * (1 << 20)
        for _ in range(megabytes):
            sock.sendall(chunk)
            sent += 1
        return f"sent all {sent} MiB"
    except OSError as error:
        answer = b""
        with contextlib.suppress(OSError):
            answer = sock.recv(200)
        return f"cut after {sent} MiB ({type(error).__name__}); answer: {answer[:40]!r}"
    finally:
        sock.close()


def attack(name: str, args: argparse.Namespace, host: str, port: int) -> dict[str, object]:
    rss_before = psutil.Process(args.pid).memory_info().rss
    watch = RssWatch(args.pid)
    started = time.monotonic()
    outcome: object
    held: list[socket.socket] = []
    if name == "headers":
        results: list[str] = []
        threads = [threading.Thread(target=lambda: results.append(header_flood(host, port, 300))) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        outcome = results
    elif name == "quotes":
        request = urllib.request.Request(
            f"{args.url}/v1/embeddings",
            data=b'{"input":["x"]}',
            headers={"content-type": "application/json", "x-junk": '"' * 540_000},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                outcome = response.status
        except urllib.error.HTTPError as error:
            outcome = f"{error.code} {error.read()[:80]!r}"
        except OSError as error:
            outcome = repr(error)
    elif name in ("silent", "slowloris"):
        count = args.silent if name == "silent" else 200
        refused = 0
        for _ in range(count):
            try:
                held.append(socket.create_connection((host, port), timeout=5))
            except OSError:
                refused += 1
        if name == "slowloris":
            for sock in held:
                sock.sendall(b"GET / HTTP/1.1\r\n")
        time.sleep(1.0)
        during = normal_requests(args.url, args.api_key, 20)
        if name == "slowloris":
            for _ in range(3):
                for sock in held:
                    with contextlib.suppress(OSError):
                        sock.sendall(b"X")
                time.sleep(1.0)
        outcome = {"connections": len(held), "refused_at_connect": refused, "normal_during": during[0]}
    for sock in held:
        sock.close()
    time.sleep(1.0)
    statuses, latencies = normal_requests(args.url, args.api_key, 50)
    peak = watch.stop()
    rss_after = psutil.Process(args.pid).memory_info().rss
    mib = 1024 * 1024
    return {
        "attack": name,
        "outcome": outcome,
        "seconds": round(time.monotonic() - started, 1),
        "rss_mib": [round(rss_before / mib), round(peak / mib), round(rss_after / mib)],
        "normal_after": {
            "ok": statuses.count(200),
            "errors": len(statuses) - statuses.count(200),
            "p50_ms": round(statistics.median(latencies), 1),
            "p99_ms": round(sorted(latencies)[int(len(latencies) * 0.99) - 1], 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--pid", type=int, required=True, help="pid of the `orchestrator up` process")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--silent", type=int, default=6000, help="silent connections to open")
    parser.add_argument("--attacks", default="headers,quotes,silent,slowloris")
    args = parser.parse_args()
    target = urlparse(args.url)
    host, port = target.hostname or "127.0.0.1", target.port or 80
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("loopback targets only")
    for name in args.attacks.split(","):
        print(json.dumps(attack(name, args, host, port)), flush=True)


if __name__ == "__main__":
    main()
