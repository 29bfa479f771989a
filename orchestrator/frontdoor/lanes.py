"""The front door's end of the direct lane: one TCP connection per replica, our balancer choosing among them.

Replicas register their lane (host, port) with the metrics hub when they start; ``DirectForwarder`` polls that
registry, keeps one open, authenticated connection per planned instance and sends each request to the instance with
the lowest balancer score (``orchestrator/balancer.py``). Its inputs are exact or fresh: the requests outstanding on
each lane are counted here (this front door is the only sender), and every answer carries the replica's busy
fraction and queue. A connection that breaks fails its outstanding requests with ``InstanceLost`` (the front door
resends them once, to another instance) and the instance counts as down until a replica registers for it again
(Serve replaces it) and the lane reconnects.

Nothing here imports Ray: the registry is any coroutine returning endpoints (the hub in ``deploy.open_forwarder``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from orchestrator.balancer import InstanceLoad, Weights, choose, faded_load
from orchestrator.contracts.errors import (
    HeadersTooLarge,
    InstanceLost,
    NoInstance,
    OrchestratorError,
    PayloadTooLarge,
)
from orchestrator.contracts.forwarding import (
    ForwardedRequest,
    ForwardedResponse,
    error_response,
)
from orchestrator.contracts.lane_protocol import (
    CANCEL,
    DEFAULT_LOAD_WINDOW_S,
    HELLO,
    PING,
    RESPONSE,
    Frame,
    FrameRejected,
    LaneProtocolError,
    encode,
    read_frame,
    request_frame,
    response_from,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Heartbeat:
    """How the front door tells a frozen replica from a busy one: its event loop answers a PING at once even while
    its batches compute on other threads, so ``silence_s`` without any frame means it cannot answer at all."""

    period_s: float = 2.0
    silence_s: float = 10.0


@dataclass(frozen=True)
class LaneEndpoint:
    """Where one instance's replica listens; ``incarnation`` changes when Serve replaces the replica."""

    instance: str
    host: str
    port: int
    incarnation: str


Discover = Callable[[], Awaitable[Iterable[LaneEndpoint]]]


class LaneConnection:
    """One open lane: many requests in flight at once, matched to their answers by id."""

    def __init__(
        self,
        endpoint: LaneEndpoint,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_lost: Callable[[], None] | None = None,
        heartbeat: Heartbeat | None = None,
        load_window_s: float = DEFAULT_LOAD_WINDOW_S,
    ) -> None:
        self.endpoint = endpoint
        self.load_window_s = load_window_s  # as the replica said at greeting: how fast its reported load goes stale
        self._on_lost = on_lost
        self._reader = reader
        self._writer = writer
        self._pending: dict[int, asyncio.Future[Frame]] = {}
        self._next_id = 0
        self._lost: str | None = None
        loop = asyncio.get_running_loop()
        self._last_heard = loop.time()
        self._reading = loop.create_task(self._read_answers())
        self._beating = loop.create_task(self._beat(heartbeat or Heartbeat()))

    @classmethod
    async def open(
        cls,
        endpoint: LaneEndpoint,
        token: str,
        timeout_s: float,
        on_lost: Callable[[], None] | None = None,
        heartbeat: Heartbeat | None = None,
    ) -> LaneConnection:
        """Connect and greet; raises OSError, TimeoutError or LaneProtocolError (wrong token, another instance).
        ``on_lost`` is called once, when the lane breaks or is closed."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(endpoint.host, endpoint.port), timeout_s)
        try:
            writer.write(encode(Frame(0, HELLO, {"token": token})))
            answer = await asyncio.wait_for(read_frame(reader), timeout_s)
            if answer is None or answer.kind != HELLO:
                raise LaneProtocolError("the replica closed the lane at greeting (wrong lane token?)")
            if answer.meta.get("instance") != endpoint.instance:
                raise LaneProtocolError(f"expected instance {endpoint.instance}, found {answer.meta.get('instance')}")
            window = answer.meta.get("load_window_s")
        except BaseException:
            writer.close()
            raise
        usable = isinstance(window, int | float) and math.isfinite(window) and window > 0
        return cls(endpoint, reader, writer, on_lost, heartbeat, float(window) if usable else DEFAULT_LOAD_WINDOW_S)

    @property
    def alive(self) -> bool:
        return self._lost is None

    async def send(self, request: ForwardedRequest) -> Frame:
        """The RESPONSE frame answering ``request``; raises InstanceLost if the lane breaks first and FrameRejected
        if the request is too large to send or its answer cannot be read. Cancelling the caller tells the replica
        to drop the request."""
        if self._lost is not None:
            raise InstanceLost(self._lost)
        self._next_id = (self._next_id + 1) % (1 << 32)
        request_id = self._next_id
        frame = encode(request_frame(request_id, request))  # raises FrameRejected before anything is sent
        answer: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = answer
        try:
            self._writer.write(frame)
            return await answer
        except asyncio.CancelledError:
            if self._lost is None and not self._writer.is_closing():
                self._writer.write(encode(Frame(request_id, CANCEL, {})))
            raise
        finally:
            self._pending.pop(request_id, None)

    def close(self, reason: str = "lane closed") -> None:
        self._fail_all(reason)
        self._writer.close()
        self._reading.cancel()
        self._beating.cancel()

    async def _beat(self, heartbeat: Heartbeat) -> None:
        """Ping every ``period_s``; a replica silent for ``silence_s`` is lost (its requests are resent)."""
        loop = asyncio.get_running_loop()
        while self._lost is None:
            await asyncio.sleep(heartbeat.period_s)
            silent_s = loop.time() - self._last_heard
            if silent_s > heartbeat.silence_s:
                logger.warning("lane to %s: no answer for %.0f s; taken out", self.endpoint.instance, silent_s)
                self.close(f"{self.endpoint.instance} stopped answering for {silent_s:.0f} s (frozen or overloaded)")
                return
            if not self._writer.is_closing():
                self._writer.write(encode(Frame(0, PING, {})))

    async def _read_answers(self) -> None:
        reason = "the replica closed its lane"
        try:
            while True:
                try:
                    frame = await read_frame(self._reader)
                except FrameRejected as rejected:  # one unreadable answer fails its own request only
                    waiting = self._pending.get(rejected.request_id)
                    if waiting is not None and not waiting.done():
                        waiting.set_exception(rejected)
                    continue
                if frame is None:
                    break
                self._last_heard = asyncio.get_running_loop().time()
                waiting = self._pending.get(frame.request_id)
                if frame.kind == RESPONSE and waiting is not None and not waiting.done():
                    waiting.set_result(frame)
        except (ConnectionError, asyncio.IncompleteReadError, LaneProtocolError) as error:
            reason = f"lane to {self.endpoint.instance} broke: {type(error).__name__}: {error}"
        self._fail_all(reason)
        self._writer.close()
        self._beating.cancel()

    def _fail_all(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason
            if self._on_lost is not None:
                self._on_lost()
        for waiting in self._pending.values():
            if not waiting.done():
                waiting.set_exception(InstanceLost(reason))


class DirectForwarder:
    """``Forwarder`` over direct lanes; ``readiness()`` gives (instances connected, instances planned).

    Args:
        capacities: planned instance name -> requests it is sized to hold (the balancer's capacity).
        token: the lane token given to the replicas.
        discover: returns the registered endpoints (any subset; unknown instance names are ignored).
        weights: the balancer's weights.
        poll_s: how often the registry is read while some planned instance has no open lane.
        settled_poll_s: how often it is read while every lane is open (a lane that breaks wakes the watcher at
            once; the slow read only finds a replica replaced behind a connection that never broke).
        connect_timeout_s: for connecting and greeting.
        clock: monotonic seconds (for the age of reported loads).
        heartbeat: how often each lane is pinged and how long a silent replica is waited for.
        prefer: instances chosen first among equally good ones (those on this front door's own node: no hop
            between machines for them).
    """

    def __init__(
        self,
        capacities: Mapping[str, float],
        token: str,
        discover: Discover,
        weights: Weights = Weights(),
        poll_s: float = 0.5,
        settled_poll_s: float = 5.0,
        connect_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        heartbeat: Heartbeat = Heartbeat(),
        prefer: frozenset[str] = frozenset(),
    ) -> None:
        self._heartbeat = heartbeat
        self._prefer = prefer
        self._capacity = {name: max(float(capacity), 1.0) for name, capacity in capacities.items()}
        self._token = token
        self._discover = discover
        self._weights = weights
        self._poll_s = poll_s
        self._settled_poll_s = settled_poll_s
        self._lane_lost = asyncio.Event()
        self._connect_timeout_s = connect_timeout_s
        self._clock = clock
        self._lanes: dict[str, LaneConnection] = {}
        self._outstanding = dict.fromkeys(self._capacity, 0)
        self._reported: dict[str, tuple[float, float]] = {}  # instance -> (load, when)
        self._watching: asyncio.Task[None] | None = None
        self._all_connected = asyncio.Event()

    async def start(self, wait_s: float = 30.0) -> None:
        """Start watching the registry (on the caller's loop); return once every planned instance is connected or
        after ``wait_s`` (readiness then shows the missing ones)."""
        if self._watching is None:
            self._watching = asyncio.get_running_loop().create_task(self._watch())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_connected.wait(), wait_s)

    async def __call__(self, request: ForwardedRequest) -> ForwardedResponse:
        connected = [(name, lane) for name, lane in self._lanes.items() if lane.alive]
        if self._prefer:  # the balancer breaks ties in input order: this node's instances first
            connected.sort(key=lambda pair: pair[0] not in self._prefer)
        if not connected:
            raise NoInstance(f"0 of {len(self._capacity)} instances connected; they are starting or being replaced")
        now = self._clock()
        best = choose((self._instance_load(name, now) for name, _ in connected), self._weights)
        assert best is not None
        name = str(best.key)
        lane = self._lanes[name]
        self._outstanding[name] += 1
        try:
            frame = await lane.send(request)
        except FrameRejected as rejected:  # nothing was sent, or the answer could not be read: this request only
            return error_response(request.path, _refusal(rejected))
        finally:
            self._outstanding[name] -= 1
        self._reported[name] = (float(frame.meta.get("load", 0.0)), self._clock())
        return response_from(frame)

    def _instance_load(self, name: str, now: float) -> InstanceLoad:
        load, when = self._reported.get(name, (0.0, now))
        outstanding = self._outstanding[name]
        faded = faded_load(load, now - when, self._load_window_s(name), outstanding)
        return InstanceLoad(key=name, load=faded, outstanding=outstanding, capacity=self._capacity[name])

    def _load_window_s(self, name: str) -> float:
        lane = self._lanes.get(name)
        return lane.load_window_s if lane is not None else DEFAULT_LOAD_WINDOW_S

    def readiness(self) -> tuple[int, int]:
        """(instances with an open lane, instances planned)."""
        return sum(lane.alive for lane in self._lanes.values()), len(self._capacity)

    async def aclose(self) -> None:
        """Stop watching and close every lane (call after in-flight requests have finished)."""
        if self._watching is not None:
            self._watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watching
        for lane in self._lanes.values():
            lane.close("the front door is stopping")

    async def _watch(self) -> None:
        while True:
            try:
                endpoints = list(await self._discover())
            except Exception:  # the registry restarting must not stop the lanes already open
                logger.debug("could not read the lane registry", exc_info=True)
                endpoints = []
            await asyncio.gather(*(self._connect(endpoint) for endpoint in endpoints))
            settled = self.readiness()[0] == len(self._capacity)
            if settled:
                self._all_connected.set()
            # Each read is an actor call that costs the hub and this process CPU the replicas could use: read
            # often only while something is missing (measured: 2 reads/s were ~0.3% of a 2-core machine).
            await self._sleep_unless_lane_lost(self._settled_poll_s if settled else self._poll_s)

    async def _sleep_unless_lane_lost(self, seconds: float) -> None:
        # asyncio.wait, not wait_for: on Python 3.11 wait_for swallows a cancel that lands just as the event is set,
        # and aclose would then wait forever for the watcher.
        lost = asyncio.ensure_future(self._lane_lost.wait())
        try:
            await asyncio.wait({lost}, timeout=seconds)
        finally:
            lost.cancel()
        self._lane_lost.clear()

    async def _connect(self, endpoint: LaneEndpoint) -> None:
        if endpoint.instance not in self._capacity:
            return
        current = self._lanes.get(endpoint.instance)
        if current is not None and current.endpoint == endpoint and current.alive:
            return
        try:
            lane = await LaneConnection.open(
                endpoint, self._token, self._connect_timeout_s, self._lane_lost.set, self._heartbeat
            )
        except (OSError, TimeoutError, LaneProtocolError, asyncio.IncompleteReadError) as error:
            logger.debug("lane to %s at %s:%d not open: %s", endpoint.instance, endpoint.host, endpoint.port, error)
            return
        previous = self._lanes.get(endpoint.instance)
        if previous is not None:
            previous.close(f"instance {endpoint.instance} was replaced")
        self._lanes[endpoint.instance] = lane
        self._reported.pop(endpoint.instance, None)
        logger.info("lane to %s open (%s:%d)", endpoint.instance, endpoint.host, endpoint.port)


def _refusal(rejected: FrameRejected) -> OrchestratorError:
    """The client's answer for a request the lane could not carry (the edge's limits make this rare)."""
    if rejected.too_large == "meta":
        return HeadersTooLarge(f"request headers too large to forward: {rejected}")
    if rejected.too_large == "body":
        return PayloadTooLarge(f"request too large to forward: {rejected}")
    return OrchestratorError(f"the instance's answer could not be read: {rejected}")
