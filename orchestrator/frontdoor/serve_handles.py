"""The Ray side of the front door: send a request to the replica our router picks, and watch how many run.

Calls go through a Serve ``DeploymentHandle``, so the deployment's ``WeightedLoadRouter`` chooses the replica exactly
as it would for Serve's own proxy. Ray's failures are translated into the front door's two cases: the instance was
lost (its actor died or is unreachable: retry elsewhere) and no instance exists.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from orchestrator.contracts.errors import InstanceLost, NoInstance
from orchestrator.contracts.forwarding import ForwardedRequest, ForwardedResponse
from orchestrator.frontdoor.readiness import InstanceCount

logger = logging.getLogger(__name__)

READINESS_POLL_S = 1.0


class ServeForwarder:
    """``Forwarder`` over a handle to the embedding deployment; ``readiness()`` gives (running, planned) replicas."""

    def __init__(self, app_name: str, deployment_name: str, planned: int) -> None:
        self._method: Any = None  # the handle is made on first use, inside the front door's event loop (see below)
        self._app_name = app_name
        self._deployment_name = deployment_name
        self._count = InstanceCount(planned)
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="replica-readiness", daemon=True)
        self._watcher.start()

    async def __call__(self, request: ForwardedRequest) -> ForwardedResponse:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
        from ray.serve.exceptions import DeploymentUnavailableError

        if self._count.serve_running == 0:  # Serve's own count: a replica only we saw die may be back already
            raise NoInstance(f"0 of {self._count.planned} instances running; Serve is restarting them")
        if self._method is None:
            from ray import serve

            # With RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0 (see deploy.start_ray) the handle's router runs on the
            # loop that first uses it: it must be this one.
            self._method = serve.get_deployment_handle(self._deployment_name, self._app_name).forward
        response = self._method.remote(request)
        try:
            return await response
        except asyncio.CancelledError:
            response.cancel()
            raise
        except (ActorDiedError, ActorUnavailableError, RayActorError) as error:
            self._count.instance_lost(str(getattr(error, "actor_id", None) or _last_line(error)))
            raise InstanceLost(_last_line(error)) from None
        except DeploymentUnavailableError as error:
            raise NoInstance(_last_line(error)) from None

    async def start(self, wait_s: float = 0.0) -> None:
        """Nothing to open: Serve's handle is made on first use (kept for the same interface as direct lanes)."""

    def readiness(self) -> tuple[int, int]:
        """(replicas running, replicas planned): Serve's count (polled every second) less the replicas this front
        door saw die that Serve has not noticed yet (``orchestrator/frontdoor/readiness.py``)."""
        return self._count()

    async def aclose(self) -> None:
        """Stop watching Serve's status (``deploy`` then shuts Serve down, on this same loop, where the handle's
        router lives: see ``__call__``)."""
        self.stop_watching()

    def stop_watching(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        import ray
        from ray import serve
        from ray.serve._private.common import ReplicaState

        while not self._stop.wait(READINESS_POLL_S) and ray.is_initialized():
            try:
                application = serve.status().applications.get(self._app_name)
                deployment = application.deployments.get(self._deployment_name) if application else None
                self._count.serve_reports(deployment.replica_states.get(ReplicaState.RUNNING, 0) if deployment else 0)
            except Exception:  # Serve shutting down, or the controller restarting: keep the last count
                logger.debug("could not read Serve's status", exc_info=True)


def _last_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[-1][:300]
