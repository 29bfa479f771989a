"""Whether a replica's GPU can still compute: after a sticky CUDA error in any batch it cannot, for the life of the
process, and the replica must be replaced (gpu-audit W7).

``DeviceHealth.guard`` wraps the backend's ``embed``: it watches each batch's failure, and once the device is lost it
refuses further batches at once (CUDA work on a lost context fails anyway, or hangs) with ``Unhealthy``. ``check``
raises the same, for the serving framework's health hook.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.contracts.errors import Unhealthy
from workers.backends.cuda_errors import sticky_cuda_error

logger = logging.getLogger(__name__)

Embed = Callable[[Sequence[Sequence[int]]], Any]


class DeviceHealth:
    """The device state of one replica: healthy until a batch fails with a sticky CUDA error."""

    def __init__(self, device: str) -> None:
        self._device = device
        self._lock = threading.Lock()  # batches fail on the batcher's worker threads
        self._lost: str | None = None

    @property
    def lost(self) -> str | None:
        """Why the device is lost (the first sticky error), or None while it is healthy."""
        return self._lost

    def record(self, error: BaseException) -> None:
        """Note a batch's failure; a sticky CUDA error marks the device lost for good."""
        name = sticky_cuda_error(error)
        if name is None:
            return
        with self._lock:
            if self._lost is not None:
                return
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            self._lost = f"{name}: {first_line}"
        logger.error("%s is lost (%s): failing the health check so that the replica is replaced", self._device, name)

    def check(self) -> None:
        """Raise Unhealthy once the device is lost."""
        if self._lost is not None:
            raise Unhealthy(
                f"{self._device} failed with a sticky CUDA error ({self._lost}); this replica cannot compute again "
                "and is being replaced"
            )

    def guard(self, embed: Embed) -> Embed:
        """``embed``, refusing every batch once the device is lost and recording each failure."""

        def guarded(batch: Sequence[Sequence[int]]) -> Any:
            self.check()
            try:
                return embed(batch)
            except Exception as error:
                self.record(error)
                raise

        return guarded
