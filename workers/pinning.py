"""Binding a replica process to its CPU pool (cores and compute threads) or to its GPU device (MIG slice)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence

logger = logging.getLogger(__name__)


def pin_to_cpu_pool(cores: Sequence[int], threads: int, torch_threads: bool = True) -> tuple[int, ...]:
    """Restrict this process to ``cores`` and (``torch_threads``) torch to ``threads`` intra-op threads and one
    inter-op thread; the ONNX backend sizes its own session and never imports torch.

    Returns the cores actually granted (the intersection with what the process may use). Must run before the
    model computes anything, because torch fixes its inter-op pool at first use.
    """
    granted: tuple[int, ...] = tuple(cores)
    if cores and hasattr(os, "sched_setaffinity"):
        allowed = os.sched_getaffinity(0)
        wanted = set(cores) & allowed or allowed
        os.sched_setaffinity(0, wanted)
        granted = tuple(sorted(wanted))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if not torch_threads:
        return granted
    import torch

    torch.set_num_threads(threads)
    # Fails when already set or already used: harmless, the intra-op count is what matters.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    return granted


class PinningError(RuntimeError):
    """The replica does not see exactly the device its plan names."""


def _bare_uuid(uuid: str) -> str:
    """``MIG-1b85...`` / ``GPU-1e44...`` / ``1b85...`` -> ``1b85...`` (lower case)."""
    text = uuid.strip().lower()
    for prefix in ("mig-", "gpu-"):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def check_visible_device(expected_uuid: str, visible_uuids: Sequence[str]) -> None:
    """Raise PinningError unless exactly one device is visible and its UUID is the planned one."""
    if len(visible_uuids) != 1:
        raise PinningError(
            f"expected to see exactly one CUDA device ({expected_uuid}), saw {len(visible_uuids)}: "
            f"{', '.join(visible_uuids) or 'none'} (was CUDA initialised before CUDA_VISIBLE_DEVICES was set?)"
        )
    if _bare_uuid(visible_uuids[0]) != _bare_uuid(expected_uuid):
        raise PinningError(f"landed on device {visible_uuids[0]}, but the plan pins this instance to {expected_uuid}")


def pin_to_gpu_device(device_uuid: str) -> None:
    """Make ``device_uuid`` (a MIG or GPU UUID) the only CUDA device of this process, then verify it.

    Must run before anything initialises CUDA in the process: CUDA reads CUDA_VISIBLE_DEVICES once.
    Raises PinningError when torch sees anything but that one device.
    """
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    os.environ["CUDA_VISIBLE_DEVICES"] = device_uuid
    import torch

    if not torch.cuda.is_available():
        raise PinningError(f"CUDA is not available in this replica (pinned to {device_uuid}); is the driver visible?")
    visible = [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]
    check_visible_device(device_uuid, visible)
