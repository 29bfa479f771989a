"""The ONNX Runtime backend: the exported graph on a CPU pool, pooled on its numpy output.

It needs neither torch nor transformers at run time (only ``onnxruntime`` and numpy), so a replica with a warm
export cache starts without importing them. Its session uses exactly the pool's threads (intra-op = threads,
inter-op = 1, sequential execution) so N pools never oversubscribe the cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from workers.backends import BackendInfo, pad_batch
from workers.backends.pooling import pool


class OnnxBackend:
    """Runs ``graph`` with ONNX Runtime's CPU provider."""

    def __init__(
        self, graph: Path, pooling: str, threads: int, pad_id: int, dimensions: int, quantized: bool = False
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._output = self._session.get_outputs()[0].name
        self._pooling = pooling
        self._pad_id = pad_id
        self.info = BackendInfo(
            dimensions=dimensions,
            dtype="int8" if quantized else "float32",
            device="cpu",
            backend="onnx",
            attn_implementation="onnxruntime",
        )

    def embed(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        input_ids, mask = pad_batch(batch, self._pad_id)
        feeds = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
        hidden = self._session.run([self._output], {name: feeds[name] for name in self._inputs})[0]
        return pool(hidden, mask, self._pooling).astype(np.float32, copy=False)
