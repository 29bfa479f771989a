"""The reranking service of one instance: tokenise (query, document) pairs, queue them in the batcher like texts, turn
the cross-encoder's logits into scores.

Scores are what sentence-transformers' ``CrossEncoder.predict`` returns for the same pairs: the model's logit through
the activation its folder names (sigmoid unless it says otherwise; ``workers/rerank_card.py``), or the logit itself
when raw scores are asked for. It knows nothing of HTTP (``workers/api_rerank.py`` shapes the answers) or Ray.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from workers.batcher import Batcher
from workers.instance_metrics import InstanceMetrics
from workers.rerank_tokenizer import PairTokenizer
from workers.service import INLINE_TOKENIZE_CHARS, InstanceService, ServiceInfo, process_memory


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    """``activation`` (sigmoid, identity or tanh) of ``logits``, computed in float64, as float32."""
    wide = logits.astype(np.float64)
    if activation == "sigmoid":
        # Split by sign so that exp never overflows: 1 / (1 + e^-x) for x >= 0, e^x / (1 + e^x) below.
        positive = wide >= 0
        exp = np.exp(np.where(positive, -wide, wide))
        wide = np.where(positive, 1.0 / (1.0 + exp), exp / (1.0 + exp))
    elif activation == "tanh":
        wide = np.tanh(wide)
    elif activation != "identity":
        raise ValueError(f"unknown activation {activation!r}")
    return wide.astype(np.float32)


@dataclass(frozen=True)
class RerankResult:
    """One score per document (input order), and the accounting for the response and the metrics."""

    scores: np.ndarray
    prompt_tokens: int
    queue_s: float
    inference_s: float

    @property
    def rows(self) -> int:
        """Pairs computed (the metrics' count)."""
        return len(self.scores)


class RerankService(InstanceService):
    """Score a query against documents with the instance's cross-encoder."""

    def __init__(
        self,
        tokenizer: PairTokenizer,
        batcher: Batcher,
        info: ServiceInfo,
        activation: str = "sigmoid",
        metrics: InstanceMetrics | None = None,
        labels: dict[str, str] | None = None,
        capacity: int | None = None,
        memory_probe: Callable[[], tuple[int | None, int | None]] = process_memory,
    ) -> None:
        super().__init__(batcher, info, metrics, labels, capacity, memory_probe)
        self.tokenizer = tokenizer
        self.activation = activation
        activate(np.zeros(1, dtype=np.float32), activation)  # an unknown activation fails here, not per request

    async def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        truncate: bool | None = None,
        direction: str = "right",
        raw_scores: bool = False,
    ) -> RerankResult:
        """Score each document against ``query`` (input order).

        ``truncate``: cut pairs over the model's limit (``longest_first``, on ``direction``) instead of refusing
        them; None (the request did not say) takes the instance's ``auto_truncate``. ``raw_scores``: the logits,
        without the activation.

        Raises ValidationFailed/InputTooLong for bad input, Overloaded when the queue is full, DeadlineExceeded past
        the request timeout, BackendFailure when the model fails.
        """
        if truncate is None:
            truncate = self.info.auto_truncate
        size = len(query) + sum(len(document) for document in documents)  # the query is tokenised once
        if size <= INLINE_TOKENIZE_CHARS:
            rows = self.tokenizer.encode_pairs(query, documents, truncate, direction)
        else:
            rows = await asyncio.to_thread(self.tokenizer.encode_pairs, query, documents, truncate, direction)
        computed = await self._submit_with_deadline(rows)
        logits = computed.vectors[:, 0]  # one label: the reranker card refuses other models
        return RerankResult(
            scores=logits.astype(np.float32) if raw_scores else activate(logits, self.activation),
            prompt_tokens=sum(len(row) for row in rows),
            queue_s=computed.queue_s,
            inference_s=computed.inference_s,
        )
