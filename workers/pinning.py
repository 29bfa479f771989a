"""Binding a replica process to its CPU pool (cores and compute threads) or to its GPU devices (a MIG slice, or one
or more whole GPUs)."""

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
    """The replica does not see exactly the devices its plan names."""


def _bare_uuid(uuid: str) -> str:
    """``MIG-1b85...`` / ``GPU-1e44...`` / ``1b85...`` -> ``1b85...`` (lower case)."""
    text = uuid.strip().lower()
    for prefix in ("mig-", "gpu-"):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def check_visible_devices(expected_uuids: Sequence[str], visible_uuids: Sequence[str]) -> None:
    """Raise PinningError unless the visible devices are exactly the planned ones, in the planned order (device i
    of the device map must be the i-th planned GPU)."""
    wanted = len(expected_uuids)
    if len(visible_uuids) != wanted:
        count = "exactly one CUDA device" if wanted == 1 else f"exactly {wanted} CUDA devices"
        raise PinningError(
            f"expected to see {count} ({', '.join(expected_uuids)}), saw {len(visible_uuids)}: "
            f"{', '.join(visible_uuids) or 'none'} (was CUDA initialised before CUDA_VISIBLE_DEVICES was set?)"
        )
    for index, (seen, expected) in enumerate(zip(visible_uuids, expected_uuids, strict=True)):
        if _bare_uuid(seen) != _bare_uuid(expected):
            where = "" if wanted == 1 else f" as CUDA device {index}"
            raise PinningError(f"landed on device {seen}{where}, but the plan pins this instance to {expected}")


def check_visible_device(expected_uuid: str, visible_uuids: Sequence[str]) -> None:
    """Raise PinningError unless exactly one device is visible and its UUID is the planned one."""
    check_visible_devices((expected_uuid,), visible_uuids)


def pin_to_gpu_devices(device_uuids: Sequence[str]) -> None:
    """Make ``device_uuids`` (one MIG or GPU UUID, or several whole-GPU UUIDs) the CUDA devices 0..n-1 of this
    process, in that order, then verify it.

    Must run before anything initialises CUDA in the process: CUDA reads CUDA_VISIBLE_DEVICES once.
    Raises PinningError when torch sees anything but exactly those devices.
    """
    joined = ",".join(device_uuids)
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    os.environ["CUDA_VISIBLE_DEVICES"] = joined
    import torch

    if not torch.cuda.is_available():
        raise PinningError(f"CUDA is not available in this replica (pinned to {joined}); is the driver visible?")
    visible = [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]
    check_visible_devices(device_uuids, visible)


def pin_to_gpu_device(device_uuid: str) -> None:
    """Make ``device_uuid`` (a MIG or GPU UUID) the only CUDA device of this process (see ``pin_to_gpu_devices``)."""
    pin_to_gpu_devices((device_uuid,))
