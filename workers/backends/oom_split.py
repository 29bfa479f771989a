"""A batch that runs the device out of memory is split in halves and retried, down to single texts (gpu-audit B3).

The batcher's token budget is planned to fit, but the activations also depend on what else holds memory at that
moment (another concurrent batch, the allocator's fragmentation); failing every request of a batch that would fit in
two halves is worse than computing it a little slower. Only one text that does not fit even alone fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from orchestrator.contracts.errors import BackendFailure
from workers.backends import PartialBatchFailure
from workers.backends.cuda_errors import is_out_of_memory

logger = logging.getLogger(__name__)

RunBatch = Callable[[Sequence[Sequence[int]]], np.ndarray]


def embed_splitting_on_oom(run: RunBatch, batch: Sequence[Sequence[int]], device: str) -> np.ndarray:
    """``run(batch)``; on a device out-of-memory, the two halves of ``batch`` each the same way, in order.

    A single text that does not fit on ``device`` even alone fails alone: with other texts computed beside it, the
    result is a PartialBatchFailure (its row a BackendFailure naming the text's length); when no text could be
    computed, that BackendFailure.
    Any other error of ``run`` propagates unchanged.
    """
    rows, failures = _embed_rows(run, batch, device)
    if not failures:
        return np.stack(rows)  # type: ignore[arg-type]
    if len(failures) == len(batch):  # nothing computed: every text fails as the first did
        raise failures[0]
    raise PartialBatchFailure(rows, failures)


def _embed_rows(
    run: RunBatch, batch: Sequence[Sequence[int]], device: str
) -> tuple[list[np.ndarray | None], dict[int, Exception]]:
    too_big: str | None = None
    try:
        return list(run(batch)), {}
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        if len(batch) == 1:
            too_big = (
                f"a text of {len(batch[0])} tokens does not fit in the free memory of {device} even alone "
                "(out of memory): lower model.max_input_tokens or batching.max_batch_tokens, or use a bigger slice"
            )
    # Retried only once out of the except block: the error's traceback holds the failed pass's frames, whose
    # activations would otherwise stay allocated during the retry.
    if too_big is not None:
        return [None], {0: BackendFailure(too_big)}
    half = (len(batch) + 1) // 2
    logger.warning(
        "out of memory on %s with %d texts (up to %d tokens): retrying as %d + %d",
        device,
        len(batch),
        max(len(ids) for ids in batch),
        half,
        len(batch) - half,
    )
    first, first_failures = _embed_rows(run, batch[:half], device)
    second, second_failures = _embed_rows(run, batch[half:], device)
    return first + second, {**first_failures, **{half + row: error for row, error in second_failures.items()}}
