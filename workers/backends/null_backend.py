"""The model-less backend of the ingress benchmark: answers every batch at once with placeholder vectors.

It exists so that ``scripts/bench_ingress.py`` can measure what the front door costs per request (HTTP parsing,
balancing, the lanes) with replicas that do no more than the request path itself. A replica uses it only for a
model folder carrying ``MARKER_FILE``, which no real checkpoint has and which only that script writes; there is no
config option, so a serving config can reach it only by pointing ``model.path`` at such a folder, whose weights file
holds no tensors.

Everything else of the replica's path stays: the HTTP app and its validation, the tokenizer (the script writes a
cheap word-level one), the batcher and the response's serialisation. The vectors are rows of a fixed table of
model-like unit vectors, chosen by the token count: deterministic, of the model's dimension, as many bytes on the wire
as a model's, and free to compute.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from workers.backends import BackendInfo

MARKER_FILE = "orchestrator-ingress-bench.json"
MARKER_KIND = "orchestrator-ingress-bench"
# What /info and every answer's "model" field say, whatever the config named the model (the bench's config uses it
# as the model's name too, so requests naming it are accepted).
SERVED_NAME = "ingress-bench (no model)"


def marker_content() -> dict[str, object]:
    """What ``MARKER_FILE`` holds (the bench script writes it; ``is_ingress_bench_folder`` checks ``kind``)."""
    return {
        "kind": MARKER_KIND,
        "version": 1,
        "note": "written by scripts/bench_ingress.py: replicas serving this folder run NO model and answer "
        "placeholder vectors; never serve it to clients",
    }


def is_ingress_bench_folder(folder: Path) -> bool:
    """True when ``folder`` carries the ingress benchmark's marker.

    Raises ValueError for a marker file that does not say it is one: a stray or damaged marker must not decide
    silently between a model and no model.
    """
    path = folder / MARKER_FILE
    if not path.is_file():
        return False
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not the ingress benchmark's marker ({error}); remove it") from None
    if not isinstance(content, dict) or content.get("kind") != MARKER_KIND:
        raise ValueError(f"{path} is not the ingress benchmark's marker (no kind: {MARKER_KIND}); remove it")
    return True


ROWS = 64


class NullBackend:
    """Placeholder vectors of ``dimensions`` floats, computed from nothing but each row's token count.

    Their values look like a model's (all digits used, signs mixed), so an answer is as many bytes as a real one: the
    front door copies, and the replica encodes, what a real answer costs. One-hot rows would answer ``0.0`` 383 times
    and make both look several times cheaper than they are.
    """

    def __init__(self, dimensions: int) -> None:
        if dimensions <= 0:
            raise ValueError(f"the ingress benchmark folder states no hidden_size (got {dimensions})")
        # A fixed table of model-like rows; each answer takes the row of its token count (no random draw per call).
        table = np.random.default_rng(20261206).standard_normal((ROWS, dimensions)).astype(np.float32)
        self._rows = table / np.linalg.norm(table, axis=1, keepdims=True)
        self.info = BackendInfo(
            dimensions=dimensions,
            dtype="float32",
            device="none",
            backend="none (ingress bench)",
            attn_implementation="none",
        )

    def embed(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Row ``len(ids) % ROWS`` of the fixed table for each input (float32, unit length)."""
        return self._rows[[len(ids) % ROWS for ids in batch]]
