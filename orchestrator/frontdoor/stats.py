"""The front door's counters, one set per front-door process, readable as one total by any of them.

With ``server.front_door_workers`` above 1 several processes serve the port and any of them answers ``/metrics``
and ``/instances``: each counts into its own row of a table of 64-bit integers in shared memory (an anonymous
``memfd`` the ``up`` process creates and its workers inherit), and a reader sums the rows. Each row has one writer
(its process, from one event loop), so increments need no lock; a reader may see a row one increment behind, as any
scrape does. A lone front door uses a private table of one row.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Mapping
from typing import Any

# The counters, by attribute name; ``FrontDoor.counters`` gives them their /metrics names.
COUNTER_FIELDS = (
    "requests",
    "retried",
    "instance_losses",
    "failed_unavailable",
    "timed_out",
    "cancelled",
    "failed_internal",
)
ROW_FIELDS = (*COUNTER_FIELDS, "pid")  # the pid says which process holds the row now (0: none yet)
_INT64 = 8


class CounterTable:
    """``rows`` rows of ``ROW_FIELDS``, in shared memory when made by ``shared`` (else private to this process)."""

    def __init__(self, rows: int, fd: int | None = None) -> None:
        size = rows * len(ROW_FIELDS) * _INT64
        self.rows = rows
        self.fd = fd
        self._map = mmap.mmap(fd, size) if fd is not None else mmap.mmap(-1, size)
        self.values = memoryview(self._map).cast("q")

    @classmethod
    def shared(cls, rows: int) -> CounterTable:
        """A table in a new anonymous shared-memory file; pass ``table.fd`` to the workers (it is inheritable)."""
        fd = os.memfd_create("orchestrator-front-door-counters", 0)
        os.ftruncate(fd, rows * len(ROW_FIELDS) * _INT64)
        os.set_inheritable(fd, True)
        return cls(rows, fd)

    def field(self, row: int, name: str) -> int:
        return int(self.values[row * len(ROW_FIELDS) + ROW_FIELDS.index(name)])

    def totals(self) -> dict[str, int]:
        """Each counter summed over every row."""
        return {name: sum(self.field(row, name) for row in range(self.rows)) for name in COUNTER_FIELDS}

    def per_row(self) -> list[dict[str, int]]:
        """Every row's fields (``pid`` included)."""
        return [{name: self.field(row, name) for name in ROW_FIELDS} for row in range(self.rows)]


class _Counter:
    """One counter of a ``FrontDoorStats`` row: ``stats.requests += 1`` reads and writes its slot."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._offset = ROW_FIELDS.index(name)

    def __get__(self, stats: Any, owner: type | None = None) -> int:
        return int(stats._table.values[stats._base + self._offset])

    def __set__(self, stats: Any, value: int) -> None:
        stats._table.values[stats._base + self._offset] = value


class FrontDoorStats:
    """The counters of one front-door process: its row of ``table`` (a private one-row table by default)."""

    requests = _Counter()
    retried = _Counter()
    instance_losses = _Counter()
    failed_unavailable = _Counter()
    timed_out = _Counter()
    cancelled = _Counter()
    failed_internal = _Counter()

    def __init__(self, table: CounterTable | None = None, row: int = 0) -> None:
        self._table = table if table is not None else CounterTable(1)
        self._base = row * len(ROW_FIELDS)
        self._table.values[self._base + ROW_FIELDS.index("pid")] = os.getpid()

    def totals(self) -> Mapping[str, int]:
        """Every front-door process's counters summed (this one's alone without workers)."""
        return self._table.totals()

    def workers(self) -> list[dict[str, int]]:
        """Each worker's row (``worker`` index, ``pid``, counters); one entry without workers."""
        return [{"worker": index, **row} for index, row in enumerate(self._table.per_row())]
