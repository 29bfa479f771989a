"""Admission by work: would a new request be done before its deadline at the replica's measured speed?

The batcher's queue is also bounded in texts, but texts are a poor measure of work: 2,048 texts of 250 tokens are
~96 s of MiniLM on one core, past a 60 s deadline, and a request admitted behind them only times out (504) after
holding its place. Here the wait of a new request is estimated as the batcher serves it (the requests with the
fewest texts left go first, in bounded rounds; see ``workers/batcher.py``): in tokens, plus a forward pass's fixed
cost per batch, times the seconds per token measured on computed batches. A request that would miss its deadline is
refused at once with ``Overloaded`` (429, ``Retry-After``: the seconds by which it would miss, at most a deadline).
A small request is not refused for a big backlog, since it goes first; a big one waits for the requests before it.
Two cases are never refused here, as the estimate is not proof enough: before the first batch was measured, and on
an idle replica (nothing ahead of the request could be waited out). The estimate leaves out the second a newcomer
may wait for a re-plan and the batches computing when it arrives.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from orchestrator.contracts.errors import Overloaded
from workers.calibration import SpeedMeter

# A request is taken while its estimated wait is within this share of its deadline. The rest is for what the estimate
# leaves out (the second before a re-plan, the batches computing, padding the speed was not measured on, small
# requests that arrive later and go first): replaying issue 14's run (2,048 texts of ~250 tokens, 60 s), the request
# taken at the very edge (60.0 s estimated) was done after 60.5 s, and the one sharing its round missed too.
DEADLINE_SHARE = 0.9


def work_ahead(
    texts: int, tokens: int, others: Iterable[tuple[int, int]], batch_texts: int, round_texts: int
) -> tuple[float, float]:
    """Texts and tokens computed before a new request of ``texts`` texts and ``tokens`` tokens is done, its own
    included, when ``others`` (texts, tokens) are left to the requests already queued.

    The batcher serves first the requests with the fewest texts left (the oldest on a tie), in rounds of about
    ``round_texts`` texts sorted together by length. So before the new request is done run: every request with no
    more texts than it, its own texts, and the texts sharing its batches: one batch of ``batch_texts`` per text of
    it, at most what fills its round (its batches go first in its round, the others of the round after them).
    Tokens are counted at the mean length of everything queued.
    """
    all_texts, all_tokens, first_texts = texts, tokens, texts
    for other_texts, other_tokens in others:
        all_texts += other_texts
        all_tokens += other_tokens
        if other_texts <= texts:
            first_texts += other_texts
    sharing = min(texts * (batch_texts - 1), max(round_texts - texts, 0))
    ahead_texts = min(all_texts, first_texts + sharing)
    return ahead_texts, all_tokens * ahead_texts / all_texts


class WorkAdmission:
    """The deadline check of one batcher: its batch limits, fixed cost per pass and measured speed."""

    def __init__(
        self,
        max_batch_size: int,
        max_batch_tokens: int,
        batch_overhead_tokens: float,
        max_concurrency: int,
        round_texts: int,
    ) -> None:
        self._max_batch_size = max_batch_size
        self._round_texts = round_texts
        self._max_batch_tokens = max_batch_tokens
        self._batch_overhead_tokens = batch_overhead_tokens
        self._max_concurrency = max_concurrency
        self.speed = SpeedMeter()

    def wait_s(self, texts: int, tokens: int, others: Sequence[tuple[int, int]]) -> float | None:
        """Seconds until a new request would be done behind ``others`` (see work_ahead); None while unmeasured."""
        seconds_per_token = self.speed.seconds_per_token
        if seconds_per_token is None:
            return None
        all_texts = texts + sum(other_texts for other_texts, _ in others)
        mean_tokens = (tokens + sum(other_tokens for _, other_tokens in others)) / all_texts
        batch_texts = max(min(self._max_batch_size, int(self._max_batch_tokens // max(mean_tokens, 1.0))), 1)
        ahead_texts, ahead_tokens = work_ahead(texts, tokens, others, batch_texts, self._round_texts)
        batches = math.ceil(ahead_texts / batch_texts)
        # With several batches computing at once each is measured slower (they share the device), but they overlap.
        return (ahead_tokens + batches * self._batch_overhead_tokens) * seconds_per_token / self._max_concurrency

    def check(self, texts: int, tokens: int, others: Sequence[tuple[int, int]], deadline_s: float) -> None:
        """Raise Overloaded, with the seconds to wait as Retry-After, when the request would miss ``deadline_s``
        (its wait estimated over ``DEADLINE_SHARE`` of it)."""
        if not others:
            return
        wait_s = self.wait_s(texts, tokens, others)
        budget_s = deadline_s * DEADLINE_SHARE
        if wait_s is None or wait_s <= budget_s:
            return
        retry_after_s = max(min(math.ceil(wait_s - budget_s), math.ceil(deadline_s)), 1)
        raise Overloaded(
            f"instance too busy: these {texts} texts would take about {wait_s:.0f} s with the work queued ahead of "
            f"them, too close to the {deadline_s:g} s deadline (server.request_timeout_s); retry in {retry_after_s} s",
            retry_after_s=retry_after_s,
        )
