"""The embedding service of one instance: tokenise, queue in the batcher, post-process vectors.

It is what the HTTP layer calls; it knows nothing of HTTP or Ray, so tests can drive it with any backend.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from orchestrator.errors import ValidationFailed
from workers.backend import BackendInfo
from workers.batcher import Batcher
from workers.tokenizer import TextTokenizer


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


@dataclass(frozen=True)
class EmbedResult:
    """Vectors in input order plus accounting for the response."""

    vectors: np.ndarray
    prompt_tokens: int
    queue_and_compute_s: float


class EmbeddingService:
    """Tokenise, batch and post-process for one instance."""

    def __init__(self, tokenizer: TextTokenizer, batcher: Batcher, info: ServiceInfo) -> None:
        self.tokenizer = tokenizer
        self.batcher = batcher
        self.info = info

    async def embed(
        self,
        inputs: Sequence[str] | Sequence[Sequence[int]],
        *,
        pre_tokenized: bool = False,
        truncate: bool = False,
        direction: str = "right",
        normalize: bool = True,
        dimensions: int | None = None,
    ) -> EmbedResult:
        """Embed texts (or token id lists when ``pre_tokenized``).

        Raises EmptyInput/ValidationFailed/InputTooLong for bad input, Overloaded when the queue is full,
        BackendFailure when the model fails.
        """
        full = self.info.backend.dimensions
        if dimensions is not None and not 0 < dimensions <= full:
            raise ValidationFailed(f"dimensions must be between 1 and {full} for this model, got {dimensions}")
        if pre_tokenized:
            token_lists = [
                self.tokenizer.check_token_ids(ids, index, truncate, direction)  # type: ignore[arg-type]
                for index, ids in enumerate(inputs)
            ]
        else:
            token_lists = self.tokenizer.encode(inputs, truncate, direction)  # type: ignore[arg-type]
        started = time.perf_counter()
        vectors = await self.batcher.submit(token_lists)
        elapsed = time.perf_counter() - started
        if dimensions is not None and dimensions < full:
            vectors = vectors[:, :dimensions]
        if normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        return EmbedResult(
            vectors=np.ascontiguousarray(vectors, dtype=np.float32),
            prompt_tokens=sum(len(ids) for ids in token_lists),
            queue_and_compute_s=elapsed,
        )
