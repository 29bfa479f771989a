"""The cross-encoder backend: a transformers sequence classifier (``AutoModelForSequenceClassification``) scoring
batches of (query, document) pair rows on a CPU pool, a GPU or a MIG slice (one device), as sentence-transformers'
``CrossEncoder`` runs it.

It keeps the batcher's contract for embedders (token id lists in, one float32 row per input out): each row is a
``PairIds`` from ``workers/rerank_tokenizer.py``, which carries its token type ids beside the ids, and the answer's row
is the pair's logits, in float32 whatever the model's dtype (CrossEncoder upcasts them too). The activation is applied
by the service, so raw scores cost nothing extra. Rows are padded on the right, as CrossEncoder's tokenizer pads.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from workers.backends import BackendInfo, pad_batch

logger = logging.getLogger(__name__)

_DTYPES = ("float32", "float16", "bfloat16")


def type_id_batch(batch: Sequence[Sequence[int]], width: int) -> np.ndarray:
    """The rows' token type ids, right-padded with 0 to ``width``; a row without them (a plain id list) is all 0."""
    types = np.zeros((len(batch), width), dtype=np.int64)
    for row, ids in enumerate(batch):
        type_ids = getattr(ids, "type_ids", None)
        if type_ids:
            types[row, : len(type_ids)] = type_ids
    return types


class CrossEncoderBackend:
    """A one-label sequence classifier run under torch.inference_mode; ``embed`` returns its logits, (n, 1) float32."""

    def __init__(
        self,
        folder: Path,
        pad_token_id: int,
        reads_token_type_ids: bool,
        dtype: str = "float32",
        device: str = "cpu",
        attn_implementation: str = "sdpa",
    ) -> None:
        """Load the model in ``dtype`` with ``attn_implementation`` (chosen by orchestrator/planning/engine_choice.py)
        onto ``device``, as the embedding backend places its model (``torch_backend.load_placement``)."""
        import torch
        from transformers import AutoModelForSequenceClassification

        from workers.backends.torch_backend import load_placement

        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r} (use {', '.join(_DTYPES)})")
        # On a GPU the weights go from the file straight to the device, without a host copy per replica.
        placement = load_placement(device, None, importlib.util.find_spec("accelerate") is not None)
        self._model = AutoModelForSequenceClassification.from_pretrained(
            folder, dtype=getattr(torch, dtype), attn_implementation=attn_implementation, **placement
        )
        if not placement:
            self._model.to(device)
        self._model.eval()
        self._device = device
        self._pad_id = pad_token_id
        self._reads_token_type_ids = reads_token_type_ids
        self.info = BackendInfo(
            dimensions=int(self._model.config.num_labels),
            dtype=dtype,
            device=device,
            backend="torch",
            attn_implementation=attn_implementation,
        )

    def embed(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Logits of ``batch``'s pairs; a batch that runs the device out of memory is split and retried."""
        from workers.backends.oom_split import embed_splitting_on_oom

        return embed_splitting_on_oom(self._score_once, batch, self.info.device)

    def _score_once(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        import torch

        input_ids, mask = pad_batch(batch, self._pad_id, "right")
        with torch.inference_mode():
            inputs = {
                "input_ids": torch.from_numpy(input_ids).to(self._device),
                "attention_mask": torch.from_numpy(mask).to(self._device),
            }
            if self._reads_token_type_ids:
                inputs["token_type_ids"] = torch.from_numpy(type_id_batch(batch, input_ids.shape[1])).to(self._device)
            return self._model(**inputs).logits.float().cpu().numpy()
