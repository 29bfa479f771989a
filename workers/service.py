"""The embedding service of one instance: tokenise, queue in the batcher, post-process vectors.

It is what the HTTP layer calls; it knows nothing of HTTP or Ray, so tests can drive it with any backend. What every
instance's service shares, whatever its task (the batcher, its deadline, the metrics and their snapshot), is
``InstanceService``; a reranker's service (``workers/rerank_service.py``) is the other kind.

Tokenising a large request runs in a worker thread, not on the event loop that also answers ``/health`` and every
other request of the replica: the tokenizer's batch encoding releases the GIL, so the loop keeps serving while it
works. Small requests are tokenised inline, as the hop to a thread (~0.15 ms measured) costs more than they do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from orchestrator.contracts.errors import DeadlineExceeded, ValidationFailed
from orchestrator.contracts.snapshot import InstanceSnapshot
from workers.backends import BackendInfo
from workers.batcher import Batcher
from workers.instance_metrics import InstanceMetrics
from workers.tokenizer import TextTokenizer

# Up to this many characters (or token ids) a request is tokenised on the event loop: at worst (CJK, one token per
# character, ~2.7 us each) that stalls the loop ~3 ms; a typical query takes ~30 us inline against ~180 us through a
# thread.
INLINE_TOKENIZE_CHARS = 1024


def process_memory() -> tuple[int | None, int | None]:
    """(resident bytes of this process, None): what a CPU pool reports as its memory."""
    try:
        with open("/proc/self/statm") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None, None
    import os

    return resident_pages * os.sysconf("SC_PAGE_SIZE"), None


@dataclass(frozen=True)
class ServiceInfo:
    """Static facts about the instance, served by /info."""

    model_name: str
    instance: str
    max_input_tokens: int
    max_batch_tokens: int
    max_inputs_per_request: int
    max_request_bytes: int
    normalize_by_default: bool
    pooling: str
    backend: BackendInfo
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    request_timeout_s: float | None = None
    # The defaults are the config's (server.accept_token_ids, server.auto_truncate), so an instance built without
    # them behaves as a default config says.
    accept_token_ids: bool = False
    auto_truncate: bool = True
    task: str = "embed"  # or "rerank" (model.task): which routes the instance answers


@dataclass(frozen=True)
class EmbedResult:
    """Vectors in input order plus accounting for the response (TEI-style timing headers, metrics)."""

    vectors: np.ndarray
    prompt_tokens: int
    queue_s: float
    inference_s: float

    @property
    def rows(self) -> int:
        """Inputs computed (the metrics' count)."""
        return len(self.vectors)


class Accounted(Protocol):
    """What a request's result tells the metrics and the timing headers, whatever the task."""

    @property
    def rows(self) -> int: ...

    @property
    def prompt_tokens(self) -> int: ...

    @property
    def queue_s(self) -> float: ...

    @property
    def inference_s(self) -> float: ...


class InstanceService:
    """The batcher of one instance with its deadline, metrics and labels: what every task's service has."""

    def __init__(
        self,
        batcher: Batcher,
        info: ServiceInfo,
        metrics: InstanceMetrics | None = None,
        labels: dict[str, str] | None = None,
        capacity: int | None = None,
        memory_probe: Callable[[], tuple[int | None, int | None]] = process_memory,
    ) -> None:
        self.batcher = batcher
        self.info = info
        self.metrics = metrics or InstanceMetrics()
        self.labels = labels or {"instance": info.instance, "model": info.model_name, "device_kind": "cpu"}
        self._capacity = capacity
        self._memory_probe = memory_probe

    async def _submit_with_deadline(self, token_lists: Sequence[Sequence[int]]) -> Any:
        timeout_s = self.info.request_timeout_s
        if timeout_s is None:
            return await self.batcher.submit(token_lists)
        try:
            # The batcher refuses at once (429) what it cannot finish in time; cancelling the submission drops its
            # texts that have not started computing (see Batcher.submit).
            return await asyncio.wait_for(self.batcher.submit(token_lists, deadline_s=timeout_s), timeout_s)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(
                f"the instance did not answer within {timeout_s:g} s (server.request_timeout_s); retry later"
            ) from None

    def snapshot(self) -> InstanceSnapshot:
        """Counters, histograms and the gauges of this instance now (for the metrics hub)."""
        stats = self.batcher.stats()
        used, total = self._memory_probe()
        return self.metrics.snapshot(
            load=stats.load,
            queued_texts=stats.queued_texts,
            memory_used_bytes=used,
            memory_total_bytes=total,
            capacity=self._capacity,
        )


class EmbeddingService(InstanceService):
    """Tokenise, batch and post-process for one instance."""

    def __init__(
        self,
        tokenizer: TextTokenizer,
        batcher: Batcher,
        info: ServiceInfo,
        metrics: InstanceMetrics | None = None,
        labels: dict[str, str] | None = None,
        capacity: int | None = None,
        memory_probe: Callable[[], tuple[int | None, int | None]] = process_memory,
    ) -> None:
        super().__init__(batcher, info, metrics, labels, capacity, memory_probe)
        self.tokenizer = tokenizer

    def prompt_text(self, prompt_name: str | None) -> str:
        """The named prompt (or the default one); ValidationFailed lists the names when it is unknown."""
        name = prompt_name if prompt_name is not None else self.info.default_prompt_name
        if name is None:
            return ""
        try:
            return self.info.prompts[name]
        except KeyError:
            known = ", ".join(sorted(self.info.prompts)) or "none (add model.prompts to the config)"
            raise ValidationFailed(f"prompt_name {name!r} is not defined for this model; defined: {known}") from None

    async def embed(
        self,
        inputs: Sequence[str] | Sequence[Sequence[int]],
        *,
        pre_tokenized: bool = False,
        truncate: bool | None = None,
        direction: str = "right",
        normalize: bool = True,
        dimensions: int | None = None,
        prompt_name: str | None = None,
    ) -> EmbedResult:
        """Embed texts (or token id lists when ``pre_tokenized``).

        ``truncate``: cut inputs over the model's limit on ``direction`` instead of refusing them; None (the request
        did not say) takes the instance's ``auto_truncate``.

        Raises EmptyInput/ValidationFailed/InputTooLong for bad input, Overloaded when the queue is full,
        BackendFailure when the model fails.
        """
        full = self.info.backend.dimensions
        if dimensions is not None and not 0 < dimensions <= full:
            raise ValidationFailed(f"dimensions must be between 1 and {full} for this model, got {dimensions}")
        prompt = "" if pre_tokenized else self.prompt_text(prompt_name)
        if truncate is None:
            truncate = self.info.auto_truncate
        size = sum(len(item) for item in inputs)
        if size <= INLINE_TOKENIZE_CHARS:
            token_lists = self._token_lists(inputs, pre_tokenized, truncate, direction, prompt)
        else:
            token_lists = await asyncio.to_thread(self._token_lists, inputs, pre_tokenized, truncate, direction, prompt)
        embedded = await self._submit_with_deadline(token_lists)
        vectors = embedded.vectors
        if dimensions is not None and dimensions < full:
            vectors = vectors[:, :dimensions]
        if normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        return EmbedResult(
            vectors=np.ascontiguousarray(vectors, dtype=np.float32),
            prompt_tokens=sum(len(ids) for ids in token_lists),
            queue_s=embedded.queue_s,
            inference_s=embedded.inference_s,
        )

    def _token_lists(
        self,
        inputs: Sequence[str] | Sequence[Sequence[int]],
        pre_tokenized: bool,
        truncate: bool,
        direction: str,
        prompt: str,
    ) -> list[list[int]]:
        """Token ids per input (runs in a worker thread for large requests: touches nothing but the tokenizer)."""
        if pre_tokenized:
            return [
                self.tokenizer.check_token_ids(ids, index, truncate, direction)  # type: ignore[arg-type]
                for index, ids in enumerate(inputs)
            ]
        return self.tokenizer.encode(inputs, truncate, direction, prompt)  # type: ignore[arg-type]
