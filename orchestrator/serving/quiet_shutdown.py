"""Keep Serve's own shutdown chatter off the user's terminal while ``orchestrator up`` stops.

When Serve stops, its controller actor exits on purpose while the driver still has calls pending on it; Ray's
driver then prints lines such as ``(raylet) Task ServeController.graceful_shutdown failed. There are infinite
retries remaining ... killed by `ray.kill`.`` They report nothing wrong, but read like a failure at every Ctrl-C.
Ray prints them from a background thread to whatever ``sys.stdout`` is at that moment, so for the few seconds of
the shutdown stdout is wrapped in a filter that drops exactly those lines and passes everything else.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TextIO

_CHATTER = ("ServeController.", "killed by `ray.kill`")


def is_shutdown_chatter(line: str) -> bool:
    """True for the driver's report of a call on Serve's controller that failed because the controller exited."""
    return all(marker in line for marker in _CHATTER)


class _ChatterFilter:
    """A text stream that forwards everything but shutdown chatter lines to ``target``."""

    def __init__(self, target: TextIO) -> None:
        self._target = target
        self._partial = ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        kept = [line for line in lines if not is_shutdown_chatter(line)]
        if kept:
            self._target.write("\n".join(kept) + "\n")
        return len(text)

    def flush(self) -> None:
        if self._partial and not is_shutdown_chatter(self._partial):
            self._target.write(self._partial)
        self._partial = ""
        self._target.flush()

    def __getattr__(self, name: str) -> object:  # isatty, encoding, fileno...: those of the real stream
        return getattr(self._target, name)


@contextlib.contextmanager
def quiet_serve_shutdown() -> Iterator[None]:
    """Drop Serve's shutdown chatter from stdout and stderr inside the block."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _ChatterFilter(saved[0]), _ChatterFilter(saved[1])  # type: ignore[assignment]
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout, sys.stderr = saved
