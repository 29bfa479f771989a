"""Binding a replica process to its CPU pool (cores and compute threads)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence

logger = logging.getLogger(__name__)


def pin_to_cpu_pool(cores: Sequence[int], threads: int) -> tuple[int, ...]:
    """Restrict this process to ``cores`` and torch to ``threads`` intra-op threads (one inter-op thread).

    Returns the cores actually granted (the intersection with what the process may use). Must run before the
    model computes anything, because torch fixes its inter-op pool at first use.
    """
    import torch

    granted: tuple[int, ...] = tuple(cores)
    if hasattr(os, "sched_setaffinity"):
        allowed = os.sched_getaffinity(0)
        wanted = set(cores) & allowed or allowed
        os.sched_setaffinity(0, wanted)
        granted = tuple(sorted(wanted))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    # Fails when already set or already used: harmless, the intra-op count is what matters.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    return granted
