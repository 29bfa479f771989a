"""Is Ray's control plane still there? A watcher for the ``up`` process, and the cleanup when it is not.

Replicas keep answering over their lanes for a while after Ray's GCS or this node's raylet dies, but nothing can
start, replace or stop a replica any more, and Ray's driver exits on its own about a minute later. An attack run
killed each: with the GCS gone ``up`` served 60 s and then died with no drain; with the raylet gone ``/health`` said
"ok" while nothing could replace a replica, and Ctrl-C hung for minutes. So:

* ``ControlPlaneWatch`` runs a probe (``deploy.control_plane_problem``: Ray's processes, a GCS call with a short
  timeout) every ``period_s`` on a thread; the first problem it sees is kept as ``lost`` (the front door's
  ``/health`` then answers 503 with the reason) and ``on_lost`` is called once (``up`` drains and exits 1).
* ``adopt_orphans`` makes this process the subreaper of everything it starts, so a Ray agent whose raylet died is
  re-parented here rather than to init, and ``kill_descendants`` can end it: no process outlives ``up``.

The probe is injected, so the watcher is tested without Ray; the Linux-only parts are no-ops elsewhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>

Probe = Callable[[], "str | None"]
"""Returns None while the control plane answers, else what is wrong in a few words."""


class ControlPlaneWatch:
    """Probes the control plane on a thread; ``lost`` holds the first problem seen (it never comes back)."""

    def __init__(self, probe: Probe, period_s: float = 2.0, on_lost: Callable[[str], None] | None = None) -> None:
        self._probe = probe
        self._period_s = period_s
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="control-plane-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self._period_s + 10.0)

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            try:
                problem = self._probe()
            except Exception as error:  # a probe that fails is itself the answer
                problem = f"the control plane could not be asked ({type(error).__name__}: {error})"
            if problem is not None and not self._stop.is_set():
                self.lost = problem
                logger.info("Ray's control plane is gone: %s", problem)
                if self._on_lost is not None:
                    self._on_lost(problem)
                return


def adopt_orphans() -> bool:
    """Become the subreaper of this process's descendants (Linux); True if it worked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def descendants(pid: int | None = None) -> list[int]:
    """The pids of every living descendant of ``pid`` (default: this process), read from /proc."""
    root = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: the fields after it start at the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def kill_descendants() -> int:
    """SIGKILL every living descendant of this process; returns how many were signalled."""
    pids = descendants()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


class SignalDeadline:
    """While armed, a SIGINT or SIGTERM ends this process within ``grace_s`` seconds, whatever the main thread does.

    Python runs signal handlers on the main thread only, between bytecodes: a Ctrl-C that arrives while the main
    thread waits inside a C call (``ray.init`` waiting for a GCS the same Ctrl-C killed) is not seen until that call
    returns, which can take a minute. The C-level handler still writes the signal to the wakeup file descriptor at
    once, so a thread reading it knows; it gives the main thread ``grace_s`` to stop things its way (the
    KeyboardInterrupt path), then ends every descendant and exits 128 + signal. Arm it around start-up only: a
    drain after Ready may rightly take longer.
    """

    def __init__(self, grace_s: float, on_expiry: Callable[[int], None] | None = None) -> None:
        self._grace_s = grace_s
        self._on_expiry = on_expiry
        self._armed = threading.Event()
        self._reader, self._writer = os.pipe()
        os.set_blocking(self._writer, False)
        self._previous_fd = signal.set_wakeup_fd(self._writer, warn_on_full_buffer=False)
        self._armed.set()
        threading.Thread(target=self._watch, name="signal-deadline", daemon=True).start()

    def disarm(self) -> None:
        """Stop watching (the service is Ready, or stopped its own way); the previous wakeup fd is restored."""
        if self._armed.is_set():
            self._armed.clear()
            signal.set_wakeup_fd(self._previous_fd)

    def _watch(self) -> None:
        while self._armed.is_set():
            try:
                received = os.read(self._reader, 16)
            except OSError:
                return
            signals = [number for number in received if number in (signal.SIGINT, signal.SIGTERM)]
            if signals and self._armed.is_set():
                threading.Timer(self._grace_s, self._expire, args=(signals[0],)).start()
                return

    def _expire(self, signum: int) -> None:
        if not self._armed.is_set():
            return
        if self._on_expiry is not None:
            self._on_expiry(signum)
        kill_descendants()
        os._exit(128 + signum)
