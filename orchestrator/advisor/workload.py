"""The request-size distribution a measurement uses: texts per request and tokens per text.

Given as numbers (``MEAN`` or ``MEAN:CV``: a log-normal around the mean, at least 1) the requests are synthesised
from a fixed list of common English words (about one token each for BERT-family tokenizers; the child measures the
real token counts and records them). Given as a sample file, each line is one request body as clients send it to
``/v1/embeddings`` or ``/embed`` (``{"input": ...}`` or ``{"inputs": ...}``, a string or a list of strings), and the
requests are drawn from those lines. Either way the same seed gives the same requests.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from orchestrator.advisor.measurements import AdvisorError

_WORDS = (
    "the model serves vectors for search and every request carries a few short texts about data cloud storage "
    "users orders payments products reviews support tickets documents pages news sports weather music travel food "
    "health science history language people city country market price time report team project system network"
).split()


@dataclass(frozen=True)
class Spread:
    """A positive count: its mean and coefficient of variation (0: always the mean)."""

    mean: float
    cv: float = 0.0

    def draw(self, rng: random.Random) -> int:
        if self.cv <= 0:
            return max(1, round(self.mean))
        sigma = math.sqrt(math.log1p(self.cv**2))
        return max(1, round(rng.lognormvariate(math.log(self.mean) - sigma * sigma / 2, sigma)))

    def describe(self) -> str:
        return f"{self.mean:g}" + (f" (cv {self.cv:g})" if self.cv else "")


def parse_spread(text: str, what: str) -> Spread:
    """``"16"`` or ``"24:0.5"``; raises AdvisorError naming ``what``."""
    mean_text, _, cv_text = text.partition(":")
    try:
        spread = Spread(float(mean_text), float(cv_text) if cv_text else 0.0)
    except ValueError:
        raise AdvisorError(f"{what}: {text!r} is not MEAN or MEAN:CV (e.g. 16 or 24:0.5)") from None
    if spread.mean < 1 or spread.cv < 0:
        raise AdvisorError(f"{what}: the mean must be at least 1 and the cv at least 0, got {text!r}")
    return spread


@dataclass(frozen=True)
class Workload:
    """Where requests come from: a sample (``sample``) or numbers (``texts`` and ``tokens``)."""

    texts: Spread = Spread(16)
    tokens: Spread = Spread(24, 0.5)
    sample: tuple[tuple[str, ...], ...] = ()
    sample_path: str | None = None

    def requests(self, count: int, seed: int = 21) -> list[list[str]]:
        """``count`` requests (lists of texts), the same for the same seed."""
        rng = random.Random(seed)
        if self.sample:
            return [list(rng.choice(self.sample)) for _ in range(count)]
        return [
            [" ".join(rng.choice(_WORDS) for _ in range(self.tokens.draw(rng))) for _ in range(self.texts.draw(rng))]
            for _ in range(count)
        ]

    def describe(self) -> dict[str, object]:
        """What the measurements file records about the workload."""
        if self.sample:
            texts = [len(r) for r in self.sample]
            return {
                "sample": self.sample_path,
                "sample_requests": len(self.sample),
                "texts_per_request_mean": round(sum(texts) / len(texts), 2),
            }
        return {
            "texts_per_request": {"mean": self.texts.mean, "cv": self.texts.cv},
            "tokens_per_text": {"mean": self.tokens.mean, "cv": self.tokens.cv},
        }


def load_sample(path: Path) -> Workload:
    """A workload drawn from a sample file (one JSON request body per line); raises AdvisorError."""
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise AdvisorError(f"{path}: cannot read the sample: {error.strerror or error}") from None
    requests: list[tuple[str, ...]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            body = json.loads(line)
            texts = body.get("input", body.get("inputs")) if isinstance(body, dict) else None
        except json.JSONDecodeError:
            texts = None
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            raise AdvisorError(f'{path}:{number}: not a request body with "input": a text or a list of texts')
        requests.append(tuple(texts))
    if not requests:
        raise AdvisorError(f"{path}: no requests in the sample (one JSON request body per line)")
    return Workload(sample=tuple(requests), sample_path=str(path))
