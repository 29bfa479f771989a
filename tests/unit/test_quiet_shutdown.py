"""Serve's shutdown chatter is dropped from the terminal while `up` stops; everything else passes."""

from __future__ import annotations

import io
import sys

from orchestrator.serving.quiet_shutdown import is_shutdown_chatter, quiet_serve_shutdown

CHATTER = (
    "\x1b[33m(raylet)\x1b[0m Task ServeController.graceful_shutdown failed. There are infinite retries remaining, "
    "so the task will be retried. Error: The actor is dead because it was killed by `ray.kill`."
)


def test_only_the_controllers_shutdown_reports_are_dropped(monkeypatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    with quiet_serve_shutdown():
        print("Stopping: finishing in-flight requests...")
        sys.stdout.write(CHATTER[:40])  # written in pieces, as a thread may
        sys.stdout.write(CHATTER[40:] + "\n")
        print("(raylet) Task EmbeddingReplica.forward failed: out of memory")  # a real problem: kept
    print("Stopped.")
    assert out.getvalue().splitlines() == [
        "Stopping: finishing in-flight requests...",
        "(raylet) Task EmbeddingReplica.forward failed: out of memory",
        "Stopped.",
    ]
    assert sys.stdout is out and is_shutdown_chatter(CHATTER)
