"""The micro-batcher: pure policy decisions and the worker's contract, with a real thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque

import numpy as np
import pytest

from modelgate.gateway.core.batcher import BatchPolicy, MicroBatcher, PendingRequest, split_outputs
from modelgate.gateway.core.errors import ErrorCode, InferenceError
from modelgate.gateway.metrics import Metrics
from modelgate.gateway.settings import BatchSettings


def _pending(rows: int, enqueued: float = 0.0) -> PendingRequest:
    loop = asyncio.new_event_loop()
    try:
        return PendingRequest({}, rows, None, loop, loop.create_future(), enqueued, enqueued)
    finally:
        loop.close()


def test_policy_goes_at_once_without_delay() -> None:
    policy = BatchPolicy(BatchSettings(max_batch_size=8, max_delay_us=0), batchable=True)
    assert policy.wait_time(queued_rows=1, oldest_enqueued=10.0, now=10.0) <= 0


def test_policy_waits_for_company_until_the_delay_or_a_full_batch() -> None:
    policy = BatchPolicy(BatchSettings(max_batch_size=8, max_delay_us=2000), batchable=True)
    assert policy.wait_time(1, oldest_enqueued=10.0, now=10.0005) == pytest.approx(0.0015)
    assert policy.wait_time(8, oldest_enqueued=10.0, now=10.0) <= 0
    assert policy.wait_time(1, oldest_enqueued=10.0, now=10.003) <= 0


def test_policy_takes_whole_requests_in_order_up_to_the_row_limit() -> None:
    policy = BatchPolicy(BatchSettings(max_batch_size=8), batchable=True)
    queue = deque(_pending(rows) for rows in (3, 4, 2, 1))
    batch = policy.take(queue)
    assert [r.rows for r in batch] == [3, 4]
    assert [r.rows for r in queue] == [2, 1]


def test_policy_runs_an_oversized_request_alone() -> None:
    policy = BatchPolicy(BatchSettings(max_batch_size=4), batchable=True)
    queue = deque(_pending(rows) for rows in (9, 1))
    assert [r.rows for r in policy.take(queue)] == [9]


def test_policy_never_batches_a_fixed_batch_model() -> None:
    policy = BatchPolicy(BatchSettings(max_batch_size=64), batchable=False)
    queue = deque(_pending(1) for _ in range(3))
    assert len(policy.take(queue)) == 1


def test_policy_runs_cheap_batches_inline_as_it_learns_their_cost() -> None:
    policy = BatchPolicy(BatchSettings(inline_max_us=250), batchable=True, batch_seconds=0.00002)
    assert policy.inline
    for _ in range(50):
        policy.observe(0.01)
    assert not policy.inline
    for _ in range(100):
        policy.observe(0.00001)
    assert policy.inline
    assert not BatchPolicy(
        BatchSettings(inline_max_us=0), batchable=True, batch_seconds=1e-6
    ).inline


def test_policy_runs_lone_requests_at_once_only_while_batches_lack_company() -> None:
    policy = BatchPolicy(BatchSettings(inline_max_us=250), batchable=True, batch_seconds=1e-5)
    assert not policy.eager  # batching until company has been measured
    for _ in range(30):
        policy.observe_company(1)
    assert policy.eager
    runs = [policy.run_alone() for _ in range(4 * BatchPolicy.PROBE_EVERY)]
    assert runs.count(False) == 4  # every PROBE_EVERY-th request queues, to keep measuring
    for _ in range(5):
        policy.observe_company(8)
    assert not policy.eager
    assert not policy.run_alone()


def test_policy_never_skips_the_queue_when_asked_to_wait_or_off_the_loop() -> None:
    waiting = BatchPolicy(BatchSettings(max_delay_us=500), batchable=True, batch_seconds=1e-5)
    on_worker = BatchPolicy(BatchSettings(inline_max_us=0), batchable=True, batch_seconds=1e-5)
    for policy in (waiting, on_worker):
        for _ in range(30):
            policy.observe_company(1)
        assert not policy.eager


def test_policy_refuses_what_cannot_start_within_its_deadline_or_the_queue_budget() -> None:
    policy = BatchPolicy(
        BatchSettings(max_batch_size=4, queue_budget_ms=50), batchable=True, batch_seconds=0.02
    )
    # Only full batches ahead count: three rows still join the next batch.
    assert policy.expected_wait(3) == 0
    assert policy.expected_wait(9) == pytest.approx(0.04)
    assert policy.refusal(9, None, now=10.0) is None
    assert policy.refusal(12, None, now=10.0) is ErrorCode.RESOURCE_EXHAUSTED  # 60 ms > 50
    # A client's deadline applies when it is the shorter one; a passed one always refuses.
    assert policy.refusal(9, 10.03, now=10.0) is ErrorCode.DEADLINE_EXCEEDED
    assert policy.refusal(9, 10.05, now=10.0) is None
    assert policy.refusal(0, 9.99, now=10.0) is ErrorCode.DEADLINE_EXCEEDED
    assert policy.refusal(12, 11.0, now=10.0) is ErrorCode.RESOURCE_EXHAUSTED
    unbudgeted = BatchPolicy(
        BatchSettings(max_batch_size=4, queue_budget_ms=0), batchable=True, batch_seconds=0.02
    )
    assert unbudgeted.refusal(4000, None, now=10.0) is None


def test_split_outputs_rejects_a_wrong_row_count() -> None:
    with pytest.raises(InferenceError) as err:
        split_outputs([np.zeros((5, 2))], [2, 2])
    assert err.value.code is ErrorCode.INTERNAL


class Recorder:
    """A model stand-in that doubles its input and records each batch's row count."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.batches: list[int] = []
        self.delay = delay
        self.gate = gate
        self.entered = threading.Event()  # a batch has reached the model (and the gate)

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(5)
        x = feeds["x"]
        self.batches.append(len(x))
        time.sleep(self.delay)
        return [x * 2, x.sum(axis=1)]


def _batcher(run: object, **settings: int) -> MicroBatcher:
    """A batcher whose batches all run on its worker thread, unless `inline_max_us` says
    otherwise (a gated model must not run on the test's event loop), and with no queue
    budget unless given one."""
    settings.setdefault("inline_max_us", 0)
    # Without a budget: gated and sleeping models would make waits the tests don't measure.
    settings.setdefault("queue_budget_ms", 0)
    metrics = Metrics().for_version("m", "1")
    return MicroBatcher(run, ["x"], BatchSettings(**settings), True, metrics)  # type: ignore[arg-type]


async def test_concurrent_requests_are_batched_and_split_back_in_order(
    rng: np.random.Generator,
) -> None:
    gate = threading.Event()
    run = Recorder(gate=gate)
    batcher = _batcher(run, max_batch_size=64)
    inputs = [rng.normal(size=(int(rng.integers(1, 5)), 3)) for _ in range(40)]
    futures = [batcher.submit({"x": x}, len(x), None) for x in inputs]
    gate.set()
    results = await asyncio.gather(*futures)
    for x, (doubled, sums) in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(doubled, x * 2)
        np.testing.assert_array_equal(sums, x.sum(axis=1))
    assert sum(run.batches) == sum(len(x) for x in inputs)
    assert len(run.batches) < len(inputs)  # requests queued behind the gate went together
    assert max(run.batches) <= 64
    batcher.stop()
    assert batcher.join(5)


async def test_a_failing_run_fails_every_request_of_its_batch() -> None:
    def broken(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise RuntimeError("boom")

    batcher = _batcher(broken)
    futures = [batcher.submit({"x": np.ones((1, 3))}, 1, None) for _ in range(3)]
    for outcome in await asyncio.gather(*futures, return_exceptions=True):
        assert isinstance(outcome, InferenceError)
        assert outcome.code is ErrorCode.INTERNAL
    batcher.stop()


async def test_a_wrong_output_count_fails_the_batch() -> None:
    batcher = _batcher(lambda feeds: [np.zeros(1)])
    futures = [batcher.submit({"x": np.ones((2, 3))}, 2, None) for _ in range(2)]
    for outcome in await asyncio.gather(*futures, return_exceptions=True):
        assert isinstance(outcome, InferenceError)
        assert outcome.code is ErrorCode.INTERNAL
    batcher.stop()


async def test_a_full_queue_refuses_at_once() -> None:
    gate = threading.Event()
    run = Recorder(gate=gate)
    batcher = _batcher(run, max_batch_size=4, max_queue=4)
    first = batcher.submit({"x": np.ones((1, 3))}, 1, None)
    assert await asyncio.to_thread(run.entered.wait, 5)  # the worker holds it at the gate
    queued = [batcher.submit({"x": np.ones((2, 3))}, 2, None) for _ in range(2)]
    with pytest.raises(InferenceError) as err:
        batcher.submit({"x": np.ones((1, 3))}, 1, None)
    assert err.value.code is ErrorCode.RESOURCE_EXHAUSTED
    gate.set()
    await asyncio.gather(first, *queued)
    batcher.stop()


async def test_a_request_whose_deadline_passes_in_the_queue_is_never_computed() -> None:
    gate = threading.Event()
    run = Recorder(gate=gate)
    batcher = _batcher(run, max_batch_size=1)
    blocker = batcher.submit({"x": np.ones((1, 3))}, 1, None)
    assert await asyncio.to_thread(run.entered.wait, 5)
    late = batcher.submit({"x": np.full((1, 3), 7.0)}, 1, time.monotonic() + 0.05)
    with pytest.raises(InferenceError) as err:
        await late
    assert err.value.code is ErrorCode.DEADLINE_EXCEEDED
    gate.set()
    await blocker
    batcher.stop()
    assert batcher.join(5)
    assert run.batches == [1]


async def test_requests_that_would_wait_too_long_are_refused_before_queueing() -> None:
    gate = threading.Event()
    run = Recorder(gate=gate)
    settings = BatchSettings(max_batch_size=1, queue_budget_ms=50, inline_max_us=0)
    metrics = Metrics().for_version("m", "1")
    # Batches known to take 0.1 s: one full batch queued means 100 ms of wait.
    batcher = MicroBatcher(run, ["x"], settings, True, metrics, batch_seconds=0.1)  # type: ignore[arg-type]
    blocker = batcher.submit({"x": np.ones((1, 3))}, 1, None)
    assert await asyncio.to_thread(run.entered.wait, 5)
    queued = batcher.submit({"x": np.ones((1, 3))}, 1, None)  # next in line: no wait known
    with pytest.raises(InferenceError) as err:
        batcher.submit({"x": np.ones((1, 3))}, 1, None)
    assert err.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert "queue budget" in err.value.message
    with pytest.raises(InferenceError) as err:
        batcher.submit({"x": np.ones((1, 3))}, 1, time.monotonic() + 0.08)
    assert err.value.code is ErrorCode.DEADLINE_EXCEEDED
    gate.set()
    await asyncio.gather(blocker, queued)
    batcher.stop()
    assert batcher.join(5)
    assert run.batches == [1, 1]


async def test_a_request_that_waited_past_the_queue_budget_is_refused_not_computed() -> None:
    # The queue ahead predicted no wait (no batch time known yet), but the request waited
    # behind two batches, the first far longer than the budget. Waiting out the batch that
    # computed when it arrived is excused (`expected_wait` does not count it either); the
    # rest is not: the request is refused when its batch is formed, and never computed.
    gate = threading.Event()
    run = Recorder(gate=gate)
    settings = BatchSettings(max_batch_size=1, queue_budget_ms=20, inline_max_us=0)
    metrics = Metrics().for_version("m", "1")
    batcher = MicroBatcher(run, ["x"], settings, True, metrics)  # type: ignore[arg-type]
    blocker = batcher.submit({"x": np.ones((1, 3))}, 1, None)
    assert await asyncio.to_thread(run.entered.wait, 5)
    ahead = batcher.submit({"x": np.ones((1, 3))}, 1, None)  # the batch in front of `late`
    late = batcher.submit({"x": np.ones((1, 3))}, 1, None)  # admitted: no wait known
    await asyncio.sleep(0.2)  # ten budgets
    gate.set()
    await blocker
    await asyncio.gather(ahead, return_exceptions=True)  # quick, after its long wait
    with pytest.raises(InferenceError) as err:
        await late
    assert err.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert "queue budget" in err.value.message
    batcher.stop()
    assert batcher.join(5)
    assert len(run.batches) <= 2  # `late` was never computed


async def test_the_queue_budget_counts_from_arrival_at_the_front_end() -> None:
    run = Recorder()
    batcher = _batcher(run, queue_budget_ms=20, inline_max_us=250)
    arrived = time.monotonic() - 0.1  # e.g. it waited on a busy event loop before the core
    with pytest.raises(InferenceError) as err:
        batcher.submit({"x": np.ones((1, 3))}, 1, None, arrived)
    assert err.value.code is ErrorCode.RESOURCE_EXHAUSTED
    # Inline batches on the event loop: a loop busy past the budget between queueing and
    # the flush (here a blocking sleep stands for it) refuses the request too.
    late = batcher.submit({"x": np.ones((1, 3))}, 1, None)
    time.sleep(0.1)
    with pytest.raises(InferenceError) as err:
        await late
    assert err.value.code is ErrorCode.RESOURCE_EXHAUSTED
    fresh = await batcher.submit({"x": np.ones((1, 3))}, 1, None, time.monotonic())
    np.testing.assert_array_equal(fresh[0], np.full((1, 3), 2.0))
    batcher.stop()
    assert batcher.join(5)
    assert run.batches == [1]  # only the fresh one was computed


async def test_stop_refuses_new_work_and_drains_the_queue() -> None:
    batcher = _batcher(Recorder(delay=0.01), max_batch_size=1)
    queued = [batcher.submit({"x": np.full((1, 3), i)}, 1, None) for i in range(5)]
    batcher.stop()
    with pytest.raises(InferenceError) as err:
        batcher.submit({"x": np.ones((1, 3))}, 1, None)
    assert err.value.code is ErrorCode.UNAVAILABLE
    results = await asyncio.gather(*queued)
    assert [float(r[0][0, 0]) for r in results] == [0, 2, 4, 6, 8]
    assert batcher.join(5)


async def test_cheap_batches_run_inline_on_the_loop_batched_and_in_order(
    rng: np.random.Generator,
) -> None:
    loop_thread = threading.get_ident()
    threads: set[int] = set()
    run = Recorder()

    def recording(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        threads.add(threading.get_ident())
        return run(feeds)

    batcher = _batcher(recording, max_batch_size=16, inline_max_us=10_000)
    inputs = [rng.normal(size=(int(rng.integers(1, 4)), 3)) for _ in range(30)]
    futures = [batcher.submit({"x": x}, len(x), None) for x in inputs]
    results = await asyncio.gather(*futures)
    for x, (doubled, sums) in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(doubled, x * 2)
        np.testing.assert_array_equal(sums, x.sum(axis=1))
    assert threads == {loop_thread}
    assert len(run.batches) < len(inputs)  # submitted in one loop iteration: batched
    assert max(run.batches) <= 16
    batcher.stop()
    assert batcher.join(5)


async def test_lone_requests_run_at_once_and_concurrent_ones_batch_again(
    rng: np.random.Generator,
) -> None:
    """Requests that come one per loop iteration skip the queue (counted like batches);
    once requests come together, the probes see it and they batch again."""
    run = Recorder()
    batcher = _batcher(run, max_batch_size=16, inline_max_us=10_000)
    metrics = batcher._metrics
    for _ in range(3 * BatchPolicy.PROBE_EVERY):  # one at a time: company is 1
        x = rng.normal(size=(1, 3))
        outputs = batcher.try_now({"x": x}, 1, None)
        if outputs is None:
            outputs = await batcher.submit({"x": x}, 1, None)
        np.testing.assert_array_equal(outputs[0], x * 2)
    ran_at_once = 0
    for _ in range(BatchPolicy.PROBE_EVERY):
        x = rng.normal(size=(2, 3))
        outputs = batcher.try_now({"x": x}, 2, None)
        if outputs is not None:
            ran_at_once += 1
            np.testing.assert_array_equal(outputs[0], x * 2)
    assert ran_at_once == BatchPolicy.PROBE_EVERY - 1
    counts, rows = metrics.batch_rows.snapshot()
    assert counts.sum() == len(run.batches) and rows == sum(run.batches)
    assert metrics.queue_wait.snapshot()[0].sum() == len(run.batches)

    for _ in range(2 * BatchPolicy.PROBE_EVERY):  # many per iteration: probes gather company
        pending = []
        for _ in range(8):
            x = rng.normal(size=(1, 3))
            now = batcher.try_now({"x": x}, 1, None)
            pending.append((x, now if now is not None else batcher.submit({"x": x}, 1, None)))
        for x, answer in pending:
            outputs = answer if isinstance(answer, list) else await answer
            np.testing.assert_array_equal(outputs[0], x * 2)
    assert batcher.try_now({"x": rng.normal(size=(1, 3))}, 1, None) is None
    batcher.stop()
    with pytest.raises(InferenceError) as err:
        batcher.submit({"x": rng.normal(size=(1, 3))}, 1, None)
    assert err.value.code is ErrorCode.UNAVAILABLE
    assert batcher.join(5)


async def test_a_lone_request_run_at_once_fails_alone_with_its_error() -> None:
    def picky(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds["x"]
        if (x < 0).any():
            raise InferenceError(ErrorCode.INVALID_ARGUMENT, "negative value")
        return [x * 2, x.sum(axis=1)]

    batcher = _batcher(picky, inline_max_us=10_000)
    for _ in range(30):
        batcher._policy.observe_company(1)
    with pytest.raises(InferenceError) as err:
        batcher.try_now({"x": -np.ones((1, 3))}, 1, None)
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    with pytest.raises(InferenceError) as err:
        batcher.try_now({"x": np.ones((1, 3))}, 1, time.monotonic() - 1)
    assert err.value.code is ErrorCode.DEADLINE_EXCEEDED
    outputs = batcher.try_now({"x": np.ones((1, 3))}, 1, None)
    assert outputs is not None and outputs[1].tolist() == [3.0]
    batcher.stop()
    with pytest.raises(InferenceError) as err:
        batcher.try_now({"x": np.ones((1, 3))}, 1, None)
    assert err.value.code is ErrorCode.UNAVAILABLE
    assert batcher.join(5)


async def test_batches_move_to_the_worker_when_they_get_expensive_and_back(
    rng: np.random.Generator,
) -> None:
    """No request is stranded while the batcher changes where batches run."""
    loop_thread = threading.get_ident()
    seen: list[bool] = []  # per batch: ran on the loop?
    slow = threading.Event()

    def model(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        seen.append(threading.get_ident() == loop_thread)
        if slow.is_set():
            time.sleep(0.003)
        x = feeds["x"]
        return [x * 2, x.sum(axis=1)]

    batcher = _batcher(model, max_batch_size=4, inline_max_us=1000)

    async def wave() -> None:
        inputs = [rng.normal(size=(1, 3)) for _ in range(40)]
        results = await asyncio.gather(*(batcher.submit({"x": x}, 1, None) for x in inputs))
        for x, (doubled, _) in zip(inputs, results, strict=True):
            np.testing.assert_array_equal(doubled, x * 2)

    await wave()
    assert all(seen)
    slow.set()
    for _ in range(3):
        await wave()
    assert not seen[-1]  # the average passed 1 ms: the worker runs them now
    slow.clear()
    for _ in range(20):
        await wave()
    assert seen[-1]  # cheap again: back on the loop
    batcher.stop()
    assert batcher.join(5)
