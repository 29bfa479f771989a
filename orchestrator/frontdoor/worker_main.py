"""A front-door worker process: ``python -m orchestrator.frontdoor.worker_main LISTEN_FD CHANNEL_FD TABLE_FD``.

Started only by ``orchestrator/frontdoor/workers.py`` in the ``up`` process, with the listening socket, its end of a
socket pair and the counters' table as inherited descriptors. It reads its setup from the pair, opens its own lanes
to the replicas (the registry's readings come over the pair, as the ``up`` process makes them), then accepts on the
shared socket. It never imports Ray. SIGTERM (or the ``up`` process going away: the pair closes) stops it the way the
``up`` process's own front door stops: no more accepting, in-flight requests finished within the grace period.
Ctrl-C in the terminal reaches the whole process group: the ``up`` process decides, so SIGINT is ignored here.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from typing import Any

from orchestrator.frontdoor.lanes import LaneEndpoint
from orchestrator.frontdoor.server import front_door_server_for
from orchestrator.frontdoor.stats import CounterTable, FrontDoorStats
from orchestrator.frontdoor.workers import WorkerSetup, read_message, send_message

logger = logging.getLogger("orchestrator.frontdoor.worker")


class _Stop(Exception):
    """SIGTERM: stop serving."""


class _Feed:
    """What the ``up`` process last said: the lanes' registry and the control plane's problem (None: fine)."""

    def __init__(self) -> None:
        self.lanes: list[LaneEndpoint] = []
        self.problem: str | None = None

    async def discover(self) -> list[LaneEndpoint]:
        return self.lanes

    def control_plane(self) -> str | None:
        return self.problem

    def apply(self, kind: str, payload: Any) -> None:
        if kind == "lanes":
            self.lanes = list(payload)  # replaced whole: the forwarder's loop reads one list or the other
        elif kind == "control_plane":
            self.problem = payload


def _raise_stop(_signum: int, _frame: object) -> None:
    raise _Stop


def main(argv: list[str]) -> int:
    from orchestrator.search_route import mount_search
    from orchestrator.serving.apps import catalogue_of
    from orchestrator.serving.forwarders import open_forwarder

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s front-door worker: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_stop)
    listen_fd, channel_fd, table_fd = (int(arg) for arg in argv[1:4])
    channel = socket.socket(fileno=channel_fd)
    first = read_message(channel)
    if first is None or first[0] != "setup":
        logger.error("no setup from the up process: exiting")
        return 2
    setup: WorkerSetup = first[1]
    loaded = setup.loaded
    table = CounterTable(setup.workers, table_fd)
    front = front_door_server_for(loaded, FrontDoorStats(table, setup.worker), workers=setup.workers)
    mount_search(front.front_door, loaded)  # POST /v1/search in every front-door process (up validated the section)
    feed = _Feed()
    transport = open_forwarder(
        setup.plan, setup.lane_token, loaded.config.balancer.weights(), catalogue_of(loaded), feed.discover
    )
    front.front_door.attach(transport, transport.readiness, transport.aclose)
    front.front_door.watch_control_plane(feed.control_plane)
    stopping = False
    try:
        # What the up process sent right after the setup (the registry, the control plane) before serving.
        channel.settimeout(5.0)
        for _ in range(2):
            message = read_message(channel)
            if message is not None:
                feed.apply(*message)
        channel.settimeout(None)
        front.start(socket.socket(fileno=listen_fd), before_serving=lambda: transport.start(setup.connect_wait_s))
        send_message(channel, "serving", os.getpid())  # the up process says Ready once every worker serves
        while True:
            message = read_message(channel)
            if message is None:  # the up process is gone
                break
            feed.apply(*message)
    except _Stop:
        stopping = True
    except (TimeoutError, OSError) as error:
        logger.warning("lost the up process's channel (%s): stopping", error)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop is enough
        front.stop()
    return 0 if stopping else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
