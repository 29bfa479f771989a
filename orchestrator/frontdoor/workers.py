"""Front-door worker processes: more processes accepting on the one port, each forwarding over its own lanes.

One Python process runs its front door on one core (about 1 ms of CPU per request: docs/benchmarks.md), which
would cap a GPU node far below what its slices serve. With ``server.front_door_workers: N`` the ``up`` process
starts N - 1 workers (``python -m orchestrator.frontdoor.worker_main``) that inherit its listening socket, so the
kernel hands each new connection to whichever process accepts first: a busy process accepts less. Each worker opens
its own lane to every replica and balances with its own outstanding counts plus the loads that ride on answers
(docs/balancer-study.md, "Many front doors").

The ``up`` process stays the only one that talks to Ray. It forwards to the workers, over one socket pair each,
what they cannot read themselves: the lanes' registry (each time its own forwarder reads it, so the workers learn of
a replaced replica as soon as it does) and the control plane's state (for ``/health``). Counters live in a shared
table (``stats.CounterTable``), so any process answers ``/metrics`` and ``/instances`` for all. A worker that dies
is started again in its place (its row, its share of connections); on stop every worker stops accepting, finishes
what it holds within the grace period, and exits before Serve is shut down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.frontdoor.stats import CounterTable, FrontDoorStats

if TYPE_CHECKING:
    from orchestrator.config import LoadedConfig
    from orchestrator.contracts.plan import Plan
    from orchestrator.frontdoor.lanes import Discover, LaneEndpoint
    from orchestrator.frontdoor.server import FrontDoorServer

logger = logging.getLogger(__name__)

WORKER_MODULE = "orchestrator.frontdoor.worker_main"
WATCH_PERIOD_S = 0.5
RESTARTS_PER_MINUTE = 5  # past this a worker that keeps dying is left dead (the others serve its share)
_LENGTH = struct.Struct("!I")


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs to serve: the config, the plan, the lane token, and its row of the counters' table."""

    worker: int
    workers: int
    loaded: LoadedConfig
    plan: Plan
    lane_token: str
    connect_wait_s: float = 30.0


def send_message(channel: socket.socket, kind: str, payload: Any) -> None:
    """One length-prefixed pickled ``(kind, payload)``: the channel joins a process to its own child only."""
    data = pickle.dumps((kind, payload))
    channel.sendall(_LENGTH.pack(len(data)) + data)


def read_message(channel: socket.socket) -> tuple[str, Any] | None:
    """The next message, or None once the other end has closed."""
    header = _read_exactly(channel, _LENGTH.size)
    if header is None:
        return None
    body = _read_exactly(channel, _LENGTH.unpack(header)[0])
    if body is None:
        return None
    kind, payload = pickle.loads(body)  # noqa: S301 - written by our own parent process over a private socket pair
    return str(kind), payload


def _read_exactly(channel: socket.socket, size: int) -> bytes | None:
    parts = bytearray()
    while len(parts) < size:
        chunk = channel.recv(size - len(parts))
        if not chunk:
            return None
        parts += chunk
    return bytes(parts)


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]
    channel: socket.socket
    started: float


class FrontDoorWorkers:
    """The ``up`` process's N - 1 front-door workers (index 1..N-1; the ``up`` process's own front door is 0)."""

    def __init__(
        self,
        listening: socket.socket,
        table: CounterTable,
        setup: Callable[[int], WorkerSetup],
        control_plane: Callable[[], str | None] | None = None,
    ) -> None:
        if table.fd is None:
            raise ValueError("front-door workers need a shared counters table (CounterTable.shared)")
        self._listening = listening
        self._table = table
        self._setup = setup
        self._control_plane = control_plane
        self._workers: dict[int, _Worker] = {}
        self._restarts: dict[int, list[float]] = {}
        self._lanes: list[LaneEndpoint] | None = None
        self._problem: str | None = None
        self._lock = threading.Lock()
        # Messages go out from the front door's loop (the registry) and the watcher's thread (the control plane, a
        # replacement's setup): one writer at a time, so no two frames interleave on a channel.
        self._send_lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self, count: int, wait_s: float = 60.0) -> None:
        """Start workers 1..count-1, return once each accepts on the port (or after ``wait_s``: a worker not
        serving by then is logged, and replaced if it dies), and start the watcher that restarts them and forwards
        the control plane's state."""
        for index in range(1, count):
            self._spawn(index)
        deadline = time.monotonic() + wait_s
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            if not _wait_serving(worker, deadline):
                logger.warning("front-door worker %d is not serving after %.0f s", worker.index, wait_s)
        self._watcher = threading.Thread(target=self._watch, name="front-door-workers", daemon=True)
        self._watcher.start()

    def pids(self) -> list[int]:
        """The workers' process ids (the ``up`` process not included)."""
        with self._lock:
            return [worker.process.pid for worker in self._workers.values()]

    def publishing(self, discover: Discover) -> Discover:
        """``discover`` that also hands every changed reading of the registry to the workers."""

        async def discover_and_publish() -> list[LaneEndpoint]:
            lanes = list(await discover())
            if lanes != self._lanes:
                self._lanes = lanes
                self._broadcast("lanes", lanes)
            return lanes

        return discover_and_publish

    def stop(self) -> None:
        """Ask every worker to stop: they stop accepting and finish their requests (``wait`` for them)."""
        self._stopping.set()
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> None:
        """Wait until every worker has exited (killed past ``timeout_s``), then close their channels."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            try:
                worker.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                logger.warning("front-door worker %d did not stop in time: killed", worker.index)
                worker.process.kill()
                worker.process.wait()
            worker.channel.close()
        if self._watcher is not None:
            self._watcher.join(WATCH_PERIOD_S * 4)

    def _spawn(self, index: int) -> None:
        parent_end, child_end = socket.socketpair()
        assert self._table.fd is not None  # checked in __init__; narrows the type
        fds = (self._listening.fileno(), child_end.fileno(), self._table.fd)
        command = [sys.executable, "-m", WORKER_MODULE, *map(str, fds)]
        process = subprocess.Popen(command, pass_fds=fds, env=_worker_environment())
        child_end.close()
        worker = _Worker(index, process, parent_end, time.monotonic())
        try:
            # Always these three, in this order: the worker reads the last two before it starts accepting.
            with self._send_lock:
                send_message(parent_end, "setup", self._setup(index))
                send_message(parent_end, "lanes", self._lanes or [])
                send_message(parent_end, "control_plane", self._problem)
        except OSError as error:  # it died at once: the watcher restarts it (or gives up)
            logger.warning("front-door worker %d did not take its setup: %s", index, error)
        with self._lock:
            self._workers[index] = worker

    def _broadcast(self, kind: str, payload: Any) -> None:
        with self._lock:
            workers = list(self._workers.values())
        with self._send_lock:
            for worker in workers:
                with contextlib.suppress(OSError):  # a dead worker: the watcher restarts it with the latest state
                    send_message(worker.channel, kind, payload)

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH_PERIOD_S):
            if self._control_plane is not None:
                problem = self._control_plane()
                if problem != self._problem:
                    self._problem = problem
                    self._broadcast("control_plane", problem)
            with self._lock:
                dead = [w for w in self._workers.values() if w.process.poll() is not None]
            for worker in dead:
                if self._stopping.is_set():
                    return
                self._replace(worker)

    def _replace(self, worker: _Worker) -> None:
        now = time.monotonic()
        recent = [t for t in self._restarts.get(worker.index, []) if now - t < 60.0]
        worker.channel.close()
        if len(recent) >= RESTARTS_PER_MINUTE:
            logger.error(
                "front-door worker %d exited %d times in a minute (last exit code %s): not started again; the "
                "other front-door processes serve its share",
                worker.index,
                len(recent),
                worker.process.returncode,
            )
            with self._lock:
                self._workers.pop(worker.index, None)
            return
        logger.warning(
            "front-door worker %d (pid %d) exited with code %s: starting it again",
            worker.index,
            worker.process.pid,
            worker.process.returncode,
        )
        self._restarts[worker.index] = [*recent, now]
        self._spawn(worker.index)


def _wait_serving(worker: _Worker, deadline: float) -> bool:
    """Wait for the worker's one message, sent once it accepts on the port."""
    try:
        worker.channel.settimeout(max(deadline - time.monotonic(), 0.01))
        message = read_message(worker.channel)
    except OSError:  # includes the timeout
        return False
    finally:
        worker.channel.settimeout(None)
    return message is not None and message[0] == "serving"


def _worker_environment() -> dict[str, str]:
    """Our environment, with this package's root first on PYTHONPATH: the worker imports the code we run."""
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (package_root, env.get("PYTHONPATH"))))
    return env


def prepare_workers(
    front: FrontDoorServer, loaded: LoadedConfig, plan: Plan, lane_token: str, count: int, wait_s: float = 30.0
) -> FrontDoorWorkers:
    """Workers 1..count-1 beside ``front`` (started, listening), not started yet: ``front`` now counts into row 0 of
    their shared table, and ``publishing`` must wrap the registry its forwarder reads before ``start``."""
    if front.listening_socket is None:
        raise RuntimeError("the front door must listen before its workers are prepared")
    table = CounterTable.shared(count)
    front.front_door.use_stats(FrontDoorStats(table, 0))

    def setup(index: int) -> WorkerSetup:
        return WorkerSetup(index, count, loaded, plan, lane_token, wait_s)

    return FrontDoorWorkers(front.listening_socket, table, setup, front.front_door.control_plane_problem)
