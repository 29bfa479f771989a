"""The front door: the one HTTP endpoint, in front of every replica.

A small ASGI app (no Ray import: the way to the replicas is a transport handed in) that reads each request whole,
bounded by ``server.max_request_bytes``, and forwards it to the replica the balancer picks. It owns what no replica
can do for itself:

- **retry on a lost instance**: embedding is idempotent, so a request whose replica died before answering is sent
  once more (the transport has taken the dead replica out by then); clients see no failure;
- **JSON for every failure**, including "no instance yet" and "instance lost twice" (503 with ``Retry-After``) and a
  replica that never answers (504 after the request deadline plus a grace period);
- **cancellation**: a client that disconnects cancels its request on the replica, which drops its queued texts;
- **mounted apps**: ``mount(prefix, app)`` hands every request under a path prefix (``/v1/search``, say) to another
  ASGI app, whole and untouched (its body is not read here; the request never reaches a replica), so a service built
  on the endpoint can answer under the same host and port;
- **readiness**: ``/health`` gains ``instances_ready``/``instances_planned`` (``degraded`` while some are down) and
  ``control_plane`` (503 once Ray's control plane is gone: ``orchestrator/serving/control_plane.py``),
  ``/metrics`` gains the front door's own series (retries, lost instances, ready instances), and ``/instances`` (the
  dashboard's source) gains the same counters and the ready count (``orchestrator.instances_view.with_front_door``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from orchestrator.contracts.errors import (
    ClientTooSlow,
    DeadlineExceeded,
    InstanceLost,
    NoInstance,
    OrchestratorError,
    PayloadTooLarge,
    ServiceUnavailable,
)
from orchestrator.contracts.forwarding import (
    BoundedBody,
    ForwardedRequest,
    ForwardedResponse,
    Forwarder,
    error_response,
)
from orchestrator.frontdoor.stats import FrontDoorStats
from orchestrator.instances_view import with_front_door

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Readiness = Callable[[], tuple[int, int]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

RETRIES_ON_LOST_INSTANCE = 1
DEADLINE_GRACE_S = 5.0  # replicas answer their own 504 at the deadline; this catches one that answers nothing
CONNECTION_CLOSE = (b"connection", b"close")
HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
INSTANCES_PATH = "/instances"


class FrontDoor:
    """ASGI app forwarding every HTTP request to one replica (see the module docstring for what it adds)."""

    def __init__(
        self,
        max_request_bytes: int,
        request_timeout_s: float | None,
        readiness: Readiness | None = None,
        retries: int = RETRIES_ON_LOST_INSTANCE,
        deadline_grace_s: float = DEADLINE_GRACE_S,
        client_timeout_s: float | None = None,
        stats: FrontDoorStats | None = None,
    ) -> None:
        self._max_request_bytes = max_request_bytes
        self._client_timeout_s = client_timeout_s
        self._deadline_s = None if request_timeout_s is None else request_timeout_s + deadline_grace_s
        self._readiness = readiness
        self._retries = retries
        self._forwarder: Forwarder | None = None
        self._on_close: Callable[[], Awaitable[None]] | None = None
        self._control_plane: Callable[[], str | None] | None = None
        self._mounted: list[tuple[str, AsgiApp]] = []
        self.stats = stats if stats is not None else FrontDoorStats()  # a row of the workers' shared table

    def mount(self, prefix: str, app: AsgiApp) -> None:
        """Answer every request whose path is ``prefix`` or below it (``prefix + "/..."``) with ``app`` (an ASGI
        app, called with the original scope: ``root_path`` gains the prefix and ``path`` keeps it, as Starlette's
        ``Mount`` does). Mounted prefixes are checked in the order they were mounted, before any forwarding; the
        edge's limits (headers, connections, client time) still apply, the body size limit is the app's own."""
        if not prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"mount prefix {prefix!r} must start with '/' and not end with it")
        self._mounted.append((prefix, app))

    def _mounted_app(self, path: str) -> tuple[str, AsgiApp] | None:
        for prefix, app in self._mounted:
            if path == prefix or path.startswith(prefix + "/"):
                return prefix, app
        return None

    def use_stats(self, stats: FrontDoorStats) -> None:
        """Count into ``stats`` from now on (row 0 of the workers' shared table), carrying over what was counted."""
        for field in COUNTER_METRICS.values():
            setattr(stats, field, getattr(stats, field) + getattr(self.stats, field))
        self.stats = stats

    def control_plane_problem(self) -> str | None:
        """What ``/health`` reports about Ray's control plane: None while it answers (or nobody watches it)."""
        return self._control_plane() if self._control_plane is not None else None

    def watch_control_plane(self, problem: Callable[[], str | None]) -> None:
        """``/health`` reports ``problem()``: ``control_plane: ok``, or 503 with the problem once Ray's control
        plane is gone (nothing can replace a replica, and ``up`` is stopping)."""
        self._control_plane = problem

    def attach(
        self,
        forwarder: Forwarder,
        readiness: Readiness | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Start forwarding (until then every request gets 503 "starting"); ``on_close`` runs at ``aclose()``."""
        self._forwarder = forwarder
        self._on_close = on_close
        if readiness is not None:
            self._readiness = readiness

    async def aclose(self) -> None:
        """Run by the server on its own loop once it has stopped taking requests and finished those in flight."""
        if self._on_close is not None:
            await self._on_close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off in our server; websockets are not served
            return
        path = scope["path"]
        mounted = self._mounted_app(path) if self._mounted else None
        if mounted is not None:
            prefix, app = mounted
            await app({**scope, "root_path": scope.get("root_path", "") + prefix}, receive, send)
            return
        try:
            body = await _read_body(scope, receive, self._max_request_bytes, self._client_timeout_s)
        except (PayloadTooLarge, ClientTooSlow) as error:
            # The unread rest of the body would be taken for the next request: the connection ends here.
            answer = error_response(path, error)
            await _send(send, ForwardedResponse(answer.status, (*answer.headers, CONNECTION_CLOSE), answer.body))
            return
        except _ClientGone:
            return
        request = ForwardedRequest(
            method=scope["method"],
            path=path,
            query_string=scope.get("query_string", b""),
            headers=tuple((bytes(name), bytes(value)) for name, value in scope.get("headers", ())),
            body=body,
        )
        self.stats.requests += 1
        try:
            response = await self._answer(request, receive)
        except asyncio.CancelledError:
            # The server is stopping and its grace period is over: uvicorn cancels what still runs and would answer
            # a plain-text 500 (with a traceback in the log). The client gets JSON it can act on instead.
            response = error_response(path, ServiceUnavailable("the service stopped before answering: retry"))
        if response is not None:
            await _send(send, response)

    async def _answer(self, request: ForwardedRequest, receive: Receive) -> ForwardedResponse | None:
        """The response to send, or None when the client went away first."""
        forwarding = asyncio.ensure_future(self._forward_with_retry(request))
        disconnect = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            done, _ = await asyncio.wait(
                {forwarding, disconnect}, timeout=self._deadline_s, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            forwarding.cancel()  # the replica drops the request's queued texts
            raise
        finally:
            disconnect.cancel()
        if forwarding in done:
            response = forwarding.result()
        else:
            forwarding.cancel()  # cancels the call on the replica, which drops the request's queued texts
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await forwarding
            if disconnect in done:
                self.stats.cancelled += 1
                return None
            self.stats.timed_out += 1
            response = error_response(
                request.path, DeadlineExceeded(f"no answer from the instance in {self._deadline_s:.0f} s")
            )
        return self._decorate(request.path, response)

    async def _forward_with_retry(self, request: ForwardedRequest) -> ForwardedResponse:
        forwarder = self._forwarder
        if forwarder is None:
            return error_response(request.path, ServiceUnavailable("the service is starting: instances are loading"))
        for attempt in range(self._retries + 1):
            try:
                return await forwarder(request)
            except InstanceLost as lost:
                self.stats.instance_losses += 1
                if attempt < self._retries:
                    self.stats.retried += 1
                    logger.warning("instance lost during %s %s (%s); retrying", request.method, request.path, lost)
            except NoInstance as missing:
                self.stats.failed_unavailable += 1
                return error_response(request.path, ServiceUnavailable(f"no instance is running: {missing}"))
            except Exception as error:  # a Ray or Serve failure we do not know: still a JSON answer, never a crash
                logger.exception("forwarding %s %s failed", request.method, request.path)
                self.stats.failed_internal += 1
                failure = OrchestratorError(f"internal error while forwarding: {type(error).__name__}")
                return error_response(request.path, failure)
        self.stats.failed_unavailable += 1
        return error_response(
            request.path, ServiceUnavailable(f"the instance serving this request was lost {attempt + 1} times")
        )

    def _decorate(self, path: str, response: ForwardedResponse) -> ForwardedResponse:
        """Readiness on ``/health``; the front door's series on ``/metrics``, its counters and readiness on
        ``/instances`` (so the dashboard shows retries, and a lost instance the moment its lane breaks)."""
        if path == HEALTH_PATH and self._readiness is not None:
            problem = self.control_plane_problem()
            response = _with_readiness(response, *self._readiness())
            if self._control_plane is not None:
                response = _with_control_plane(response, problem)
            return response
        if path == METRICS_PATH and response.status == 200:
            return _replace_body(response, response.body + self.prometheus_text().encode())
        if path == INSTANCES_PATH and response.status == 200:
            return self._with_front_door_view(response)
        return response

    def counters(self) -> dict[str, int]:
        """The front door's counters by their ``/metrics`` name (without prefix and ``_total``), summed over every
        front-door worker."""
        totals = self.stats.totals()
        return {metric: totals[field] for metric, field in COUNTER_METRICS.items()}

    def _with_front_door_view(self, response: ForwardedResponse) -> ForwardedResponse:
        try:
            view = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            return response
        if not isinstance(view, dict):
            return response
        readiness = self._readiness() if self._readiness is not None and self._forwarder is not None else None
        decorated = with_front_door(view, self.counters(), readiness)
        workers = self.stats.workers()
        if len(workers) > 1:
            decorated["front_door"]["workers"] = [
                {"worker": w["worker"], "pid": w["pid"], "requests": w["requests"]} for w in workers
            ]
        return _replace_body(response, orjson.dumps(decorated))

    def prometheus_text(self) -> str:
        """The front door's own series, in Prometheus' text format."""
        ready, planned = self._readiness() if self._readiness is not None else (0, 0)
        values = self.counters()
        lines = []
        for name, help_text in FRONT_DOOR_COUNTERS.items():
            family = f"orchestrator_front_door_{name}_total"  # named as prometheus_client writes counters
            lines += [f"# HELP {family} {help_text}", f"# TYPE {family} counter", f"{family} {float(values[name])}"]
        for name, value in (("instances_ready", ready), ("instances_planned", planned)):
            family, help_text = f"orchestrator_{name}", FRONT_DOOR_GAUGES[name]
            lines += [f"# HELP {family} {help_text}", f"# TYPE {family} gauge", f"{family} {float(value)}"]
        workers = self.stats.workers()
        if len(workers) > 1:  # how the port's requests spread over the front-door processes
            family = "orchestrator_front_door_worker_requests_total"
            lines += [f"# HELP {family} {WORKER_REQUESTS_HELP}", f"# TYPE {family} counter"]
            lines += [f'{family}{{worker="{w["worker"]}"}} {float(w["requests"])}' for w in workers]
        return "\n".join(lines) + "\n"


FRONT_DOOR_COUNTERS = {
    "requests": "Requests the front door forwarded.",
    "retries": "Requests resent after losing their instance.",
    "instance_losses": "Forwarded requests whose instance died before answering.",
    "unavailable": "Requests answered 503: no instance could take them.",
    "timeouts": "Requests answered 504 by the front door.",
    "cancelled": "Requests whose client disconnected first.",
    "internal_errors": "Requests answered 500: forwarding failed unexpectedly.",
}
FRONT_DOOR_GAUGES = {"instances_ready": "Instances running now.", "instances_planned": "Instances in the plan."}
COUNTER_METRICS = {  # /metrics name -> FrontDoorStats field
    "requests": "requests",
    "retries": "retried",
    "instance_losses": "instance_losses",
    "unavailable": "failed_unavailable",
    "timeouts": "timed_out",
    "cancelled": "cancelled",
    "internal_errors": "failed_internal",
}
WORKER_REQUESTS_HELP = "Requests each front-door worker process forwarded (server.front_door_workers)."


def front_door_metric_names() -> set[str]:
    """Every sample name the front door adds to ``/metrics``."""
    return (
        {f"orchestrator_front_door_{name}_total" for name in FRONT_DOOR_COUNTERS}
        | {f"orchestrator_{name}" for name in FRONT_DOOR_GAUGES}
        | {"orchestrator_front_door_worker_requests_total"}
    )


class _ClientGone(Exception):
    """The client disconnected while sending its body."""


async def _read_body(scope: Scope, receive: Receive, max_bytes: int, stall_timeout_s: float | None = None) -> bytes:
    """The whole body; raises PayloadTooLarge past ``max_bytes``, ClientTooSlow when no part of it arrives for
    ``stall_timeout_s`` (a slow-body client cannot hold a connection), _ClientGone on a disconnect."""
    body = BoundedBody(max_bytes, dict(scope.get("headers", ())).get(b"content-length"))
    while True:
        try:
            message = await asyncio.wait_for(receive(), stall_timeout_s)
        except TimeoutError:
            raise ClientTooSlow(f"the request body stalled for {stall_timeout_s:g} s") from None
        if message["type"] == "http.disconnect":
            raise _ClientGone
        body.add(message.get("body", b""))
        if not message.get("more_body", False):
            return body.bytes()


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _replace_body(response: ForwardedResponse, body: bytes) -> ForwardedResponse:
    headers = tuple((name, value) for name, value in response.headers if name.lower() != b"content-length")
    return ForwardedResponse(response.status, headers, body)


def _with_readiness(response: ForwardedResponse, ready: int, planned: int) -> ForwardedResponse:
    """``/health`` with the instance counts; ``degraded`` (still 200) while some instances are down."""
    try:
        payload = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return response
    if not isinstance(payload, dict):
        return response
    payload.update(instances_ready=ready, instances_planned=planned)
    if response.status == 200 and ready < planned:
        payload["status"] = "degraded"
    return _replace_body(response, orjson.dumps(payload))


def _with_control_plane(response: ForwardedResponse, problem: str | None) -> ForwardedResponse:
    """``/health`` with ``control_plane``; 503 ``unavailable`` once it is lost (a load balancer takes us out)."""
    try:
        payload = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    if problem is None:
        payload["control_plane"] = "ok"
        return _replace_body(response, orjson.dumps(payload))
    payload.update(status="unavailable", control_plane=f"lost: {problem}")
    headers = tuple((name, value) for name, value in response.headers if name.lower() != b"content-length")
    return ForwardedResponse(503, headers, orjson.dumps(payload))


async def _send(send: Send, response: ForwardedResponse) -> None:
    headers = [pair for pair in response.headers if pair[0].lower() != b"content-length"]
    headers.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})
