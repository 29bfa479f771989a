"""A fixed corpus of varied-length English sentences for tests and benchmarks (no downloads)."""

from __future__ import annotations

import random

_SUBJECTS = ["The orchestrator", "A MIG slice", "Every replica", "The balancer", "Our operator", "The embedding model"]
_VERBS = ["routes", "measures", "serves", "batches", "pins", "reports", "retries", "normalises"]
_OBJECTS = [
    "requests to the least loaded instance",
    "vectors for semantic search",
    "the queue length of each slice",
    "latency histograms for the dashboard",
    "texts of very different lengths",
    "the GPU memory of its partition",
]
_TAILS = [
    "",
    "while the cluster keeps answering every client without losing accepted work",
    "because padding wastes compute when short and long sentences share a batch",
    "and the numbers are written to the documentation after each benchmark run so that everyone can compare",
    "so that a heavy burst of traffic from many concurrent users never overwhelms one small partition of the "
    "accelerator while its larger neighbours sit idle waiting for work that the router could have sent them",
]


def sentences(count: int, seed: int = 7) -> list[str]:
    """``count`` sentences of 5 to about 60 words, the same for the same seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        parts = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS), rng.choice(_TAILS)]
        text = " ".join(part for part in parts if part)
        out.append(text + ".")
    return out
