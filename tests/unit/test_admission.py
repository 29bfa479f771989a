"""Admission by work (issue 14, finding 7): the wait estimate behind the requests already queued."""

from __future__ import annotations

import pytest

from orchestrator.contracts.errors import Overloaded
from workers.admission import WorkAdmission, work_ahead


def test_a_request_waits_for_the_smaller_ones_and_the_texts_sharing_its_batches() -> None:
    # The attack run: 2,000 texts of 250 tokens queued by one client; batches of 32, rounds of 512 texts.
    backlog = [(2000, 500_000)]
    assert work_ahead(1, 250, backlog, 32, 512) == (32, 8000.0)  # goes first: one batch, shared with 31 others
    assert work_ahead(512, 128_000, backlog, 32, 512) == (512, 128_000.0)  # fewer texts left: goes first too
    # Four requests of 256 ahead: all of them (none has more texts), then its own.
    assert work_ahead(256, 64_000, [(256, 64_000)] * 4, 32, 512) == (1280, 320_000.0)
    # Smaller ones first (1 text), its own 2, and a batch of 4 per text of it: 6 texts of the others.
    assert work_ahead(2, 20, [(1, 10), (3, 30), (100, 1000)], 4, 16) == (9, 90.0)


def test_the_wait_counts_a_pass_per_batch_and_overlapping_workers() -> None:
    admission = WorkAdmission(
        max_batch_size=32, max_batch_tokens=1000, batch_overhead_tokens=50.0, max_concurrency=2, round_texts=512
    )
    assert admission.wait_s(1, 10, []) is None  # nothing measured yet
    admission.speed.record(work_tokens=1000, seconds=1.0)
    # 64 texts of 10 tokens: 2 batches by count (640 tokens fit one by tokens) -> (640 + 2 x 50) ms / 2 workers.
    assert admission.wait_s(64, 640, []) == pytest.approx(0.37)
    # 10 texts of 200 tokens: 2 batches by tokens.
    assert admission.wait_s(10, 2000, []) == pytest.approx((2000 + 100) / 1000 / 2)


def test_check_refuses_with_the_seconds_to_wait() -> None:
    admission = WorkAdmission(32, 100_000, 0.0, 1, 512)
    admission.speed.record(work_tokens=1000, seconds=1.0)  # 1 ms a token
    admission.check(100, 50_000, [], deadline_s=10)  # idle: taken whatever the estimate
    admission.check(100, 5_000, [(100, 4_000)], deadline_s=10)  # 9 s: within 90 % of the deadline
    with pytest.raises(Overloaded, match="about 13 s") as refused:
        admission.check(100, 5_000, [(100, 8_000)], deadline_s=10)
    assert refused.value.retry_after_s == 4 and refused.value.status_code == 429  # 13 s - 9 s
    with pytest.raises(Overloaded) as far:
        admission.check(100, 5_000, [(100, 80_000)], deadline_s=10)
    assert far.value.retry_after_s == 10  # never more than a deadline
