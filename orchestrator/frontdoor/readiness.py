"""How many instances run, as ``/health`` reports it: Serve's count, corrected at once by losses seen first.

Serve's controller notices a dead replica a few seconds after the front door does (measured: about 2.5 s after a
SIGKILL, when requests in flight on it have already failed). Until Serve's count drops, each distinct replica the
front door saw die is subtracted, so ``/health`` says ``degraded`` from the first failed request on. Once Serve's
count drops, its number is the truth again; a loss Serve never confirms is forgotten after ``hold_s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class InstanceCount:
    """(running, planned) for one group of replicas; fed by Serve's status and by the front door's losses."""

    def __init__(self, planned: int, clock: Callable[[], float] = time.monotonic, hold_s: float = 10.0) -> None:
        self.planned = planned
        self.serve_running = planned  # deploy() returns only once every replica runs
        self._clock = clock
        self._hold_s = hold_s
        self._lost: dict[str, float] = {}  # replica (actor id) -> when the front door saw it die

    def serve_reports(self, running: int) -> None:
        """Serve's RUNNING count, polled about once a second."""
        if running < self.serve_running:
            self._lost.clear()  # Serve has seen the losses: its count already excludes them
        self.serve_running = running

    def instance_lost(self, replica: str) -> None:
        """A request failed because this replica died or became unreachable."""
        self._lost.setdefault(replica, self._clock())

    def __call__(self) -> tuple[int, int]:
        now = self._clock()
        self._lost = {replica: since for replica, since in self._lost.items() if now - since < self._hold_s}
        return max(self.serve_running - len(self._lost), 0), self.planned
