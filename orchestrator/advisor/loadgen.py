"""Load against a served endpoint: start ``orchestrator up``, drive it closed-loop or open-loop, read latencies.

Standard library only (threads and ``http.client`` with one keep-alive connection per thread), so it runs wherever
the orchestrator does. The open loop sends Poisson arrivals at a fixed rate and measures each latency from the
request's *scheduled* time, so a client that falls behind shows up as latency (no coordinated omission); it is what
the advisor's prediction is checked against (docs/advisor.md).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from orchestrator.advisor.load_points import RequestRecord
from orchestrator.advisor.measurements import AdvisorError

_local = threading.local()


@dataclass(frozen=True)
class LoadResult:
    """Requests answered 200 per second over the run, their latencies (seconds, sorted), and failures.

    ``in_order_s``: the same latencies in the order the requests were sent (open loop: consecutive latencies of a
    queue are correlated, which an interval for a percentile must know). ``completions``: when each answer came
    (seconds from the start) and the instance that served it (the ``x-instance`` header; "" when absent), in the
    closed loop: the departure process ``spread.departure_spread`` reads. ``records``: in the open loop, each answered
    request with the instance's own queue and inference times (``x-queue-time``, ``x-inference-time``), which
    ``load_points`` reads.
    """

    offered_rps: float
    throughput_rps: float
    latencies_s: list[float]
    errors: int
    in_order_s: list[float] = field(default_factory=list)
    completions: list[tuple[float, str]] = field(default_factory=list)
    records: list[RequestRecord] = field(default_factory=list)

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        return self.latencies_s[min(len(self.latencies_s) - 1, int(len(self.latencies_s) * q / 100))] * 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class _Answer:
    """Who answered (``""`` when the answer does not say) and its queue and inference seconds (0 when absent)."""

    instance: str
    queue_s: float
    inference_s: float


def _seconds(header: str | None) -> float:
    try:
        return float(header or 0.0) / 1000
    except ValueError:
        return 0.0


def _post(url: str, texts: Sequence[str]) -> _Answer | None:
    """One ``/v1/embeddings`` request on this thread's connection; None unless answered 200."""
    parts = urlsplit(url)
    connection = getattr(_local, "connection", None)
    if connection is None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        _local.connection = connection
    body = json.dumps({"input": list(texts), "encoding_format": "base64"})
    try:
        connection.request("POST", "/v1/embeddings", body, {"content-type": "application/json"})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            return None
        return _Answer(
            response.getheader("x-instance") or "",
            _seconds(response.getheader("x-queue-time")),
            _seconds(response.getheader("x-inference-time")),
        )
    except (OSError, http.client.HTTPException):
        connection.close()
        _local.connection = None
        return None


def closed_loop(url: str, requests: Sequence[Sequence[str]], clients: int) -> LoadResult:
    """Send every request from ``clients`` threads, each waiting for its answer before the next."""
    work = iter(requests)
    lock = threading.Lock()
    latencies: list[float] = []
    completions: list[tuple[float, str]] = []
    errors = [0]
    began = time.perf_counter()

    def client() -> None:
        while True:
            with lock:
                texts = next(work, None)
            if texts is None:
                return
            sent = time.perf_counter()
            answer = _post(url, texts)
            done = time.perf_counter()
            with lock:
                if answer is None:
                    errors[0] += 1
                else:
                    latencies.append(done - sent)
                    completions.append((done - began, answer.instance))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    return LoadResult(
        float("nan"), len(latencies) / elapsed, sorted(latencies), errors[0], list(latencies), sorted(completions)
    )


def open_loop(url: str, requests: Sequence[Sequence[str]], rate_rps: float, seed: int = 5) -> LoadResult:
    """Poisson arrivals at ``rate_rps``, one request each (in order); latency counted from the scheduled arrival."""
    rng = random.Random(seed)
    latencies: list[float | None] = [None] * len(requests)
    records: list[RequestRecord | None] = [None] * len(requests)

    def send(index: int, scheduled: float, texts: Sequence[str]) -> None:
        answer = _post(url, texts)
        if answer is not None:
            latencies[index] = latency = time.perf_counter() - scheduled
            records[index] = RequestRecord(
                answer.instance, scheduled - began, latency, answer.queue_s, answer.inference_s
            )

    with ThreadPoolExecutor(max_workers=128) as pool:
        began = time.perf_counter()
        scheduled = began
        for index, texts in enumerate(requests):
            scheduled += rng.expovariate(rate_rps)
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(send, index, scheduled, texts)
        last_arrival = scheduled
    elapsed = max(time.perf_counter(), last_arrival) - began
    answered = [latency for latency in latencies if latency is not None]
    return LoadResult(
        len(requests) / (last_arrival - began),
        len(answered) / elapsed,
        sorted(answered),
        len(requests) - len(answered),
        answered,
        records=[record for record in records if record is not None],
    )


def _answers(url: str) -> bool:
    return _post(url, ["warm"]) is not None


@contextlib.contextmanager
def running_service(config: Path, url: str, timeout_s: float = 300.0) -> Iterator[float]:
    """``orchestrator up --config config`` in a child process; yields seconds to the first embedding, then stops it
    with Ctrl-C (killed if it has not stopped within a minute). Raises AdvisorError with the log's tail."""
    with tempfile.TemporaryDirectory() as tmp, (Path(tmp) / "up.log").open("w") as log:
        began = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "up", "--config", str(config)], stdout=log, stderr=log
        )
        try:
            while not _answers(url):
                if process.poll() is not None or time.perf_counter() - began > timeout_s:
                    tail = Path(log.name).read_text().strip().splitlines()[-1:] or ["no output"]
                    raise AdvisorError(f"orchestrator up did not start for the served check: {tail[0]}")
                time.sleep(0.2)
            yield time.perf_counter() - began
        finally:
            _local.connection = None
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
