from __future__ import annotations

import asyncio

import numpy as np
import pytest

from orchestrator.contracts.errors import BackendFailure, Overloaded
from tests.fakes import FakeBackend, ManualClock, fake_vector
from workers.batcher import Batcher


def make(backend: FakeBackend, **overrides: float) -> Batcher:
    settings = {
        "max_batch_size": 4,
        "max_batch_tokens": 1000,
        "max_wait_ms": 5.0,
        "max_queued_texts": 64,
        "batch_overhead_tokens": 1000.0,  # forward passes dear: fewest batches the limits allow
    }
    settings.update(overrides)
    return Batcher(backend.embed, **settings)  # type: ignore[arg-type]


def tokens(length: int, start: int = 1) -> list[int]:
    return list(range(start, start + length))


async def test_results_come_back_in_input_order() -> None:
    backend = FakeBackend()
    batcher = make(backend)
    request = [tokens(5), tokens(2), tokens(9), tokens(1)]
    vectors = (await batcher.submit(request)).vectors
    assert np.array_equal(vectors, np.stack([fake_vector(t) for t in request]))
    await batcher.close()


async def test_concurrent_requests_are_merged_and_sorted_by_length() -> None:
    backend = FakeBackend()
    batcher = make(backend, max_batch_size=4)
    requests = [[tokens(10), tokens(3)], [tokens(7), tokens(1)], [tokens(5), tokens(2)]]
    results = await asyncio.gather(*(batcher.submit(r) for r in requests))
    for request, result in zip(requests, results, strict=True):
        assert np.array_equal(result.vectors, np.stack([fake_vector(t) for t in request]))
    lengths = [[len(t) for t in batch] for batch in backend.batches]
    # One round across requests, sorted by length; of the two-batch cuts, the one with least padding.
    assert lengths == [[1, 2, 3], [5, 7, 10]]
    await batcher.close()


async def test_token_budget_counts_padding() -> None:
    backend = FakeBackend()
    batcher = make(backend, max_batch_size=100, max_batch_tokens=20)
    await batcher.submit([tokens(4), tokens(4), tokens(4), tokens(4), tokens(4), tokens(10), tokens(10)])
    lengths = [[len(t) for t in batch] for batch in backend.batches]
    # 5 x 4 = 20 fits; a 10 joins no batch of more than 2.
    assert lengths == [[4, 4, 4, 4, 4], [10, 10]]
    assert all(max(batch) * len(batch) <= 20 for batch in lengths)
    await batcher.close()


async def test_cheap_forward_passes_keep_long_texts_apart() -> None:
    backend = FakeBackend()
    batcher = make(backend, batch_overhead_tokens=0.0)
    await batcher.submit([tokens(2), tokens(50), tokens(2), tokens(2)])
    assert [[len(t) for t in b] for b in backend.batches] == [[2, 2, 2], [50]]
    await batcher.close()


def test_cut_points_cost_no_more_than_fixed_size_batches() -> None:
    import random

    from workers.batcher import _Request, _Text

    rng = random.Random(3)
    batcher = Batcher(FakeBackend().embed, 16, 4096, 0, 4096, batch_overhead_tokens=30.0)
    for _ in range(20):
        lengths = [rng.randint(5, 120) for _ in range(rng.randint(1, 200))]
        texts = [_Text(_Request(1, None), 0, [1] * n) for n in lengths]  # type: ignore[arg-type]
        batches = batcher.form_batches(texts)
        assert sorted(len(t.tokens) for b in batches for t in b) == sorted(lengths)
        assert all(len(b) <= 16 and len(b) * max(len(t.tokens) for t in b) <= 4096 for b in batches)

        def cost(groups: list[list[int]]) -> float:
            return sum(30.0 + len(g) * max(g) for g in groups)

        ordered = sorted(lengths)
        fixed = [ordered[i : i + 16] for i in range(0, len(ordered), 16)]
        assert cost([[len(t.tokens) for t in b] for b in batches]) <= cost(fixed)


async def test_a_text_longer_than_the_budget_runs_alone() -> None:
    backend = FakeBackend()
    batcher = make(backend, max_batch_tokens=8)
    await batcher.submit([tokens(3), tokens(30)])
    assert [[len(t) for t in b] for b in backend.batches] == [[3], [30]]
    await batcher.close()


async def test_full_queue_refuses_with_overloaded() -> None:
    backend = FakeBackend()
    backend.gate.clear()
    batcher = make(backend, max_queued_texts=6, max_wait_ms=0)
    first = asyncio.create_task(batcher.submit([tokens(2)] * 4))
    await asyncio.sleep(0.05)
    with pytest.raises(Overloaded, match="limit 6"):
        await batcher.submit([tokens(2)] * 3)
    small = asyncio.create_task(batcher.submit([tokens(2)] * 2))
    backend.gate.set()
    assert (await first).vectors.shape == (4, 8)
    assert (await small).vectors.shape == (2, 8)
    assert batcher.stats().queued_texts == 0
    await batcher.close()


async def test_cancelled_requests_are_not_computed() -> None:
    backend = FakeBackend()
    backend.gate.clear()
    batcher = make(backend, max_batch_size=1, max_wait_ms=0)
    running = asyncio.create_task(batcher.submit([tokens(1)]))
    await asyncio.sleep(0.05)  # the first batch is now computing (blocked)
    gone = asyncio.create_task(batcher.submit([tokens(50), tokens(51)]))
    await asyncio.sleep(0.01)
    gone.cancel()
    kept = asyncio.create_task(batcher.submit([tokens(3)]))
    await asyncio.sleep(0.01)
    backend.gate.set()
    await running
    await kept
    computed = sorted(len(t) for batch in backend.batches for t in batch)
    assert computed == [1, 3]
    assert batcher.stats().queued_texts == 0
    await batcher.close()


async def test_model_failure_fails_only_its_batch() -> None:
    backend = FakeBackend()
    batcher = make(backend, max_batch_size=1)
    backend.fail_next = True
    with pytest.raises(BackendFailure, match="simulated model failure"):
        await batcher.submit([tokens(2)])
    assert (await batcher.submit([tokens(2)])).vectors.shape == (1, 8)
    await batcher.close()


async def test_max_concurrency_runs_batches_in_parallel() -> None:
    backend = FakeBackend()
    backend.gate.clear()
    batcher = make(backend, max_batch_size=1, max_concurrency=2, max_wait_ms=0)
    task = asyncio.create_task(batcher.submit([tokens(1), tokens(2), tokens(3)]))
    for _ in range(200):  # wait (bounded) for the workers to pick up batches
        await asyncio.sleep(0.01)
        if batcher.stats().running_batches == 2:
            break
    assert batcher.stats().running_batches == 2
    backend.gate.set()
    await task
    await batcher.close()


async def test_load_is_the_busy_fraction_of_the_window() -> None:
    clock = ManualClock(10.0)
    backend = FakeBackend()
    batcher = Batcher(backend.embed, 4, 100, 0, 10, clock=clock, load_window_s=2.0)
    assert batcher.load() == 0.0
    batcher._mark_busy(+1)
    clock.now = 11.0
    assert batcher.load() == pytest.approx(0.5)
    batcher._mark_busy(-1)
    clock.now = 12.0
    assert batcher.load() == pytest.approx(0.5)  # busy 10-11 of the window 10-12
    clock.now = 12.5
    assert batcher.load() == pytest.approx(0.25)
    clock.now = 14.0
    assert batcher.load() == 0.0
    await batcher.close()


async def test_empty_submit_is_a_programming_error() -> None:
    batcher = make(FakeBackend())
    with pytest.raises(ValueError):
        await batcher.submit([])
    await batcher.close()


async def test_timings_and_batch_records() -> None:
    clock = ManualClock(5.0)
    records = []
    backend = FakeBackend()

    def slow_model(batch):
        clock.now += 0.25  # each batch "takes" 250 ms on the injected clock
        return backend.embed(batch)

    batcher = Batcher(slow_model, 1, 100, 0, 10, clock=clock, on_batch=records.append)
    result = await batcher.submit([tokens(3), tokens(5)])
    assert result.queue_s == 0.0
    assert result.inference_s == pytest.approx(0.5)  # two batches of one text, one after the other
    assert [(r.texts, r.padded_tokens, r.seconds) for r in records] == [(1, 3, 0.25), (1, 5, 0.25)]
    await batcher.close()


async def test_an_idle_batcher_waits_for_company_only_after_a_round_that_had_some() -> None:
    backend = FakeBackend()
    batcher = make(backend, max_batch_size=8, max_wait_ms=300)

    async def lone_then_another() -> None:
        first = asyncio.ensure_future(batcher.submit([tokens(3)]))
        await asyncio.sleep(0.05)
        await asyncio.gather(first, batcher.submit([tokens(4)]))

    # A lone client (no round yet, or the last round held one request): its request starts at once, so a second
    # one 50 ms later runs in a batch of its own.
    await lone_then_another()
    assert [len(batch) for batch in backend.batches] == [1, 1]
    # A round of two concurrent requests; then an idle replica holds a partial batch up to 300 ms for company.
    await asyncio.gather(batcher.submit([tokens(2)]), batcher.submit([tokens(5)]))
    backend.batches.clear()
    await lone_then_another()
    assert [len(batch) for batch in backend.batches] == [2]
    await batcher.close()


# ---- fairness and admission (issue 14, finding 7) -------------------------------------------------------------


async def until(condition, limit_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Yield to the loop until ``condition()`` holds (bounded, for work in the batcher's threads)."""
    for _ in range(int(limit_s / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


def costed(backend: FakeBackend, clock: ManualClock, seconds_per_token: float):  # type: ignore[no-untyped-def]
    """A model that takes ``seconds_per_token`` per token of the batch on the injected clock (no fixed cost)."""

    def model(batch):  # type: ignore[no-untyped-def]
        result = backend.embed(batch)
        clock.now += seconds_per_token * sum(len(ids) for ids in batch)
        return result

    return model


async def test_a_small_request_goes_first_in_its_round() -> None:
    backend = FakeBackend()
    batcher = make(backend, max_batch_size=2)
    big = [tokens(1), tokens(1), tokens(2), tokens(2), tokens(3), tokens(3)]
    small = [tokens(9, start=500)]
    await asyncio.gather(batcher.submit(big), batcher.submit(small))
    # One round, cut by length as before ([1, 1], [2, 2], [3, 3], [9]), but the batch of the 1-text request runs first.
    assert [[len(t) for t in batch] for batch in backend.batches] == [[9], [1, 1], [2, 2], [3, 3]]
    await batcher.close()


async def test_a_request_arriving_during_a_long_round_does_not_wait_for_all_of_it() -> None:
    clock = ManualClock()
    backend = FakeBackend()
    backend.gate.clear()
    model = costed(backend, clock, 0.25 / 2)  # a batch of two 1-token texts: 0.25 s
    batcher = Batcher(model, 2, 1000, 0, 64, batch_overhead_tokens=1000.0, clock=clock, replan_after_s=1.0)
    big = asyncio.create_task(batcher.submit([tokens(1)] * 40))  # 20 batches, 5 s
    await until(backend.entered.is_set)  # its round is planned and its first batch is computing
    small = asyncio.create_task(batcher.submit([tokens(1, start=777)]))
    await asyncio.sleep(0.01)
    backend.gate.set()
    await asyncio.gather(big, small)
    position = next(i for i, batch in enumerate(backend.batches) if [777] in batch)
    # Four batches (1 s) of the first round ran, then the round was planned again with the newcomer first: it used to
    # wait for all 20.
    assert position == 4
    assert sum(len(batch) for batch in backend.batches) == 41
    await batcher.close()


async def test_big_requests_are_served_one_after_another() -> None:
    import random

    rng = random.Random(2)
    backend = FakeBackend()
    batcher = make(backend, max_batch_size=2, max_queued_texts=100)  # rounds of 16 batches: 32 texts
    first = [tokens(rng.randint(1, 30), start=1) for _ in range(40)]
    second = [tokens(rng.randint(1, 30), start=1000) for _ in range(40)]
    await asyncio.gather(batcher.submit(first), batcher.submit(second))
    owners = [{"first" if ids[0] == 1 else "second" for ids in batch} for batch in backend.batches]
    # The first request's round (all of it: whole requests) ran before the second's; they used to share one round
    # sorted by length and finish together.
    assert owners == [{"first"}] * 20 + [{"second"}] * 20
    await batcher.close()


async def test_work_that_would_miss_the_deadline_is_refused_at_once() -> None:
    clock = ManualClock()
    backend = FakeBackend()
    model = costed(backend, clock, 0.01)
    batcher = Batcher(model, 4, 1000, 0, 1000, batch_overhead_tokens=0.0, clock=clock)
    await batcher.submit([tokens(50)], deadline_s=10.0)  # measures 0.01 s a token
    backend.gate.clear()
    backend.entered.clear()
    first = asyncio.create_task(batcher.submit([tokens(100)] * 8, deadline_s=10.0))  # 8 s of work
    await until(backend.entered.is_set)
    with pytest.raises(Overloaded, match="would take about 16 s .* too close to the 10 s deadline") as refused:
        await batcher.submit([tokens(100)] * 8, deadline_s=10.0)  # 8 s behind 8 s
    assert refused.value.headers() == {"Retry-After": "7"}  # 16 s against 90 % of 10 s
    # A small request is not held behind all of it (served first, it waits for about one text of the other): taken.
    small = asyncio.create_task(batcher.submit([tokens(100, start=9)], deadline_s=10.0))
    await until(lambda: batcher.stats().queued_texts == 9)
    # Without a deadline only the text bound applies.
    unbounded = asyncio.create_task(batcher.submit([tokens(100)] * 8))
    await asyncio.sleep(0.01)
    backend.gate.set()
    await asyncio.gather(first, small, unbounded)
    assert batcher.stats().queued_texts == 0
    await batcher.close()


async def test_nothing_is_refused_for_work_before_a_measurement_or_on_an_idle_instance() -> None:
    clock = ManualClock()
    backend = FakeBackend()
    backend.gate.clear()
    batcher = Batcher(costed(backend, clock, 1.0), 4, 1000, 0, 1000, batch_overhead_tokens=0.0, clock=clock)
    first = asyncio.create_task(batcher.submit([tokens(100)] * 8, deadline_s=1.0))
    await until(backend.entered.is_set)
    second = asyncio.create_task(batcher.submit([tokens(100)] * 8, deadline_s=1.0))  # unmeasured: taken
    await asyncio.sleep(0.01)
    backend.gate.set()
    await asyncio.gather(first, second)
    # Measured now (1 s a token), but idle: a request far past its deadline alone is still tried.
    assert (await batcher.submit([tokens(100)] * 8, deadline_s=1.0)).vectors.shape == (8, 8)
    await batcher.close()


async def test_a_cancelled_request_stops_counting_as_work_ahead() -> None:
    clock = ManualClock()
    backend = FakeBackend()
    batcher = Batcher(costed(backend, clock, 0.01), 4, 1000, 0, 1000, batch_overhead_tokens=0.0, clock=clock)
    await batcher.submit([tokens(50)])
    backend.gate.clear()
    backend.entered.clear()
    running = asyncio.create_task(batcher.submit([tokens(10)]))
    await until(backend.entered.is_set)
    gone = asyncio.create_task(batcher.submit([tokens(100)] * 9))  # 9 s
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded):
        await batcher.submit([tokens(100)] * 5, deadline_s=10.0)
    gone.cancel()
    await asyncio.sleep(0.01)
    taken = asyncio.create_task(batcher.submit([tokens(100)] * 5, deadline_s=10.0))
    await asyncio.sleep(0.01)
    backend.gate.set()
    await asyncio.gather(running, taken)
    await batcher.close()


async def test_a_text_too_large_for_the_device_fails_only_its_request() -> None:
    """A batch split on out-of-memory where one text does not fit even alone: the other requests of the batch get
    their vectors, the request holding that text gets the backend's own error (gpu-audit B3)."""
    from workers.backends import PartialBatchFailure

    def run(batch):  # type: ignore[no-untyped-def]
        if any(len(ids) > 50 for ids in batch):
            rows = [None if len(ids) > 50 else fake_vector(ids) for ids in batch]
            failures = {
                row: BackendFailure("a text of 60 tokens does not fit") for row, v in enumerate(rows) if v is None
            }
            raise PartialBatchFailure(rows, failures)
        return np.stack([fake_vector(ids) for ids in batch])

    batcher = Batcher(run, max_batch_size=8, max_batch_tokens=10_000, max_wait_ms=20.0, max_queued_texts=64)
    small, huge = [tokens(3), tokens(4)], [tokens(2), tokens(60)]
    results = await asyncio.gather(batcher.submit(small), batcher.submit(huge), return_exceptions=True)
    assert np.array_equal(results[0].vectors, np.stack([fake_vector(t) for t in small]))  # type: ignore[union-attr]
    assert isinstance(results[1], BackendFailure) and "60 tokens" in results[1].message
    await batcher.close()


async def test_an_error_the_backend_words_for_the_client_reaches_it_unchanged() -> None:
    """A lost device answers 503 Unhealthy, not the 424 "the model failed on a batch" of an unexpected error."""
    from orchestrator.contracts.errors import Unhealthy

    def run(batch):  # type: ignore[no-untyped-def]
        raise Unhealthy("the GPU of this instance is lost: Serve replaces the replica")

    batcher = Batcher(run, max_batch_size=8, max_batch_tokens=10_000, max_wait_ms=1.0, max_queued_texts=64)
    with pytest.raises(Unhealthy, match="GPU of this instance is lost"):
        await batcher.submit([tokens(3)])
    await batcher.close()
