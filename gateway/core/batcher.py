"""The micro-batcher: many concurrent small requests become few ONNX Runtime runs.

`BatchPolicy` makes the pure decisions (when the next batch goes, which requests form it,
and where it runs); `MicroBatcher` owns the queue and acts on them.

Where a batch runs depends on what it costs, learned from the batches before it:
- cheap batches (a few tens of microseconds, e.g. a logistic regression) run inline on the
  event loop, at the end of the loop iteration in which their requests arrived. Handing
  such a batch to another thread costs more than running it: the GIL moves twice and the
  loop is woken through its self-pipe;
- expensive batches run on the version's worker thread (ONNX Runtime releases the GIL), so
  the loop keeps decoding requests meanwhile.

Batches grow with load without idle waiting either way: requests that arrive during one loop
iteration, or while the worker computes, all go together in the next batch.

When cheap batches have mostly held a single request lately (grpc.aio, for one, starts about
one call per loop iteration), a request that finds the queue empty runs at once, in its own
handler (`try_now`): queueing it would only add a future, a callback and a wake-up. One such
request in `PROBE_EVERY` still goes through the queue, so the batcher keeps measuring how
much company requests have and goes back to batching when it grows.

Requests may come from any asyncio loop: each carries its loop, and results go back with one
`call_soon_threadsafe` per loop (or directly, when the batch ran on that very loop).

The queue budget bounds the wait a request is admitted into, counted from when it `arrived`
(the front end took it in): it is checked when a request queues, against the full batches
ahead of it, and again when its batch is formed, against the time it has really waited.
Under overload the event loop itself falls behind (decoding, refusing, answering), so a
request can wait far longer than the queue ahead of it predicted; one that has, is refused
with RESOURCE_EXHAUSTED instead of computed: its client may already be gone, and computing
it would only push later requests past their budget too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from modelgate.gateway.core.errors import ErrorCode, InferenceError
from modelgate.gateway.metrics import VersionMetrics
from modelgate.gateway.settings import BatchSettings

log = logging.getLogger(__name__)

Outputs = list[np.ndarray]
RunFn = Callable[[dict[str, np.ndarray]], Outputs]
# Sees each successful batch's feeds and outputs (the drift monitor); must return at once.
BatchObserver = Callable[[dict[str, np.ndarray], Outputs], object]


@dataclass(slots=True, eq=False)
class PendingRequest:
    """One request waiting for (or in) a batch. `abandoned` is set by its loop on timeout."""

    feeds: dict[str, np.ndarray]
    rows: int
    deadline: float | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Outputs]
    enqueued: float
    arrived: float  # when the front end took it in: the queue budget counts from here
    abandoned: bool = False


# A request with either its outputs or the error to answer it with.
Result = tuple[PendingRequest, Outputs | None, InferenceError | None]


class BatchPolicy:
    """Pure batching decisions, separate from the loop and the thread that act on them.

    `batch_seconds` is a moving average of how long a batch takes to compute, seeded with
    the model's warm-up time; batches expected to take at most `inline_max` seconds run
    inline on the event loop.
    """

    SMOOTHING = 0.1
    # Requests per inline batch (a faster moving average) below which a lone request runs
    # at once; it starts above, so batching is the default until company has been measured.
    COMPANY_SMOOTHING = 0.2
    ALONE = 1.25
    PROBE_EVERY = 64  # a probe costs a queued round trip (~20 µs in a warm loop)

    def __init__(
        self, settings: BatchSettings, batchable: bool, batch_seconds: float = 0.0
    ) -> None:
        self.max_rows = settings.max_batch_size if batchable else 1
        self.max_delay = settings.max_delay_us / 1e6
        self.queue_budget = settings.queue_budget_ms / 1e3
        self.inline_max = settings.inline_max_us / 1e6
        self.batchable = batchable
        self.batch_seconds = batch_seconds
        self.last_batch_seconds = batch_seconds  # the latest batch's own time
        self.company = 2.0
        self._probe = 0
        # Whether the next batch should run on the event loop rather than the worker, and
        # whether a lone request may skip the queue; plain attributes: every request reads them.
        self.inline = self._inline()
        self.eager = self._eager()

    def _inline(self) -> bool:
        return self.inline_max > 0 and self.batch_seconds <= self.inline_max

    def _eager(self) -> bool:
        # Waiting for company (max_delay) is an explicit wish to batch: never skip it.
        return self.inline and self.max_delay <= 0 and self.company < self.ALONE

    def observe(self, seconds: float) -> None:
        """Fold one batch's compute time into the average."""
        self.last_batch_seconds = seconds
        self.batch_seconds += self.SMOOTHING * (seconds - self.batch_seconds)
        inline = self._inline()
        if inline != self.inline:  # rare: only then can eagerness change with it
            self.inline = inline
            self.eager = self._eager()

    def observe_company(self, requests: int) -> None:
        """Fold the number of requests in one queued inline batch into the average."""
        self.company += self.COMPANY_SMOOTHING * (requests - self.company)
        self.eager = self._eager()

    def run_alone(self) -> bool:
        """Whether a request that found the queue empty runs at once; False for every
        `PROBE_EVERY`-th, which queues so that `company` stays measured."""
        if not self.eager:
            return False
        self._probe += 1
        return self._probe % self.PROBE_EVERY != 0

    def expected_wait(self, queued_rows: int) -> float:
        """Seconds a request arriving now can expect to wait before its batch starts: one
        batch time for each full batch queued ahead of it. The batch computing now is not
        counted (how far it has got is unknown), so this errs towards admitting."""
        return (queued_rows // self.max_rows) * self.batch_seconds

    def refusal(
        self, queued_rows: int, deadline: float | None, now: float, waited: float = 0.0
    ) -> ErrorCode | None:
        """Why a request queueing now, `waited` seconds after it arrived, is refused before
        it queues, or None to queue it: DEADLINE_EXCEEDED when its deadline will have passed
        before its batch can start, RESOURCE_EXHAUSTED when the wait it has had plus the one
        it can expect exceed the queue budget."""
        wait = self.expected_wait(queued_rows)
        if deadline is not None and now + wait >= deadline:
            return ErrorCode.DEADLINE_EXCEEDED
        if self.queue_budget > 0 and waited + wait > self.queue_budget:
            return ErrorCode.RESOURCE_EXHAUSTED
        return None

    def overdue(self, waited: float) -> bool:
        """Whether a request whose batch is being formed `waited` seconds after it arrived
        has waited past the queue budget, and is refused rather than computed. Two waits do
        not count, as in `expected_wait`: the batch computing when it arrived (at most the
        latest batch's time, or the average when longer), and the wait for company
        (`max_delay`) that the settings ask for."""
        ahead = max(self.batch_seconds, self.last_batch_seconds)
        allowed = self.queue_budget + ahead + self.max_delay
        return self.queue_budget > 0 and waited > allowed

    def wait_time(self, queued_rows: int, oldest_enqueued: float, now: float) -> float:
        """Seconds to wait for more company before the next batch goes; <= 0 means now."""
        if not self.batchable or queued_rows >= self.max_rows or self.max_delay <= 0:
            return 0.0
        return oldest_enqueued + self.max_delay - now

    def take(self, queue: deque[PendingRequest]) -> list[PendingRequest]:
        """Pop the next batch from the front of `queue`, in arrival order.

        Whole requests are taken while their rows fit in `max_rows`; the first is always
        taken, so a request larger than `max_rows` runs alone rather than never.
        """
        batch = [queue.popleft()]
        rows = batch[0].rows
        if not self.batchable:
            return batch
        while queue and rows + queue[0].rows <= self.max_rows:
            request = queue.popleft()
            rows += request.rows
            batch.append(request)
        return batch


def split_outputs(outputs: Outputs, sizes: Sequence[int]) -> list[Outputs]:
    """Cut each batched output along its first dimension back into per-request pieces."""
    total = sum(sizes)
    for out in outputs:
        if out.ndim == 0 or out.shape[0] != total:
            raise InferenceError(
                ErrorCode.INTERNAL,
                f"model returned {out.shape[0] if out.ndim else 'a scalar'} rows for a batch "
                f"of {total}",
            )
    if len(sizes) == 1:
        return [outputs]
    pieces = []
    start = 0
    for end in itertools.accumulate(sizes):  # plain slices: views, and cheaper than np.split
        pieces.append([out[start:end] for out in outputs])
        start = end
    return pieces


class MicroBatcher:
    """Queues requests for one model version and runs them in batches, inline on the event
    loop or on the version's worker thread (see the module docstring)."""

    def __init__(
        self,
        run: RunFn,
        input_names: Sequence[str],
        settings: BatchSettings,
        batchable: bool,
        metrics: VersionMetrics,
        name: str = "batcher",
        batch_seconds: float = 0.0,
        observe: BatchObserver | None = None,
    ) -> None:
        self._run = run
        self._observe = observe
        self._input_names = list(input_names)
        self._policy = BatchPolicy(settings, batchable, batch_seconds)
        self._max_queue = settings.max_queue
        self._metrics = metrics
        self._queue: deque[PendingRequest] = deque()
        self._queued_rows = 0
        # Read when scraped, through a weak reference: the gauge outlives the batcher, and
        # must not keep an unloaded version's model alive.
        this = weakref.ref(self)
        metrics.queue_depth.set_function(lambda: getattr(this(), "_queued_rows", 0))
        self._cond = threading.Condition(threading.Lock())
        self._worker_waiting = False
        self._flushing: set[asyncio.AbstractEventLoop] = set()  # loops with a flush due
        self._accepting = True
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def submit(
        self,
        feeds: dict[str, np.ndarray],
        rows: int,
        deadline: float | None,
        arrived: float | None = None,
    ) -> asyncio.Future[Outputs]:
        """Queue validated `feeds` of `rows` rows; the future resolves to all model outputs.

        Must be called from a running event loop. Raises at once (never queues) when the
        batcher is stopping (UNAVAILABLE), the queue is full or the wait since `arrived`
        (monotonic; None: now) plus the expected one exceeds the queue budget
        (RESOURCE_EXHAUSTED), or `deadline` cannot be met (DEADLINE_EXCEEDED): see
        `BatchPolicy.refusal`. A queued request that has waited past the budget when its
        batch is formed fails with RESOURCE_EXHAUSTED, not computed (`BatchPolicy.overdue`).
        """
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        if arrived is None or arrived > now:
            arrived = now
        request = PendingRequest(feeds, rows, deadline, loop, loop.create_future(), now, arrived)
        with self._cond:
            if not self._accepting:
                raise InferenceError(ErrorCode.UNAVAILABLE, "model version is shutting down")
            if self._queued_rows + rows > self._max_queue and self._queue:
                raise InferenceError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"queue full ({self._queued_rows} rows waiting, limit {self._max_queue})",
                )
            refusal = self._policy.refusal(self._queued_rows, deadline, now, now - arrived)
            if refusal is not None:
                raise self._refuse(refusal)
            self._queue.append(request)
            self._queued_rows += rows
            inline = self._policy.inline
            if not inline and self._worker_waiting:
                self._cond.notify()
            schedule = inline and loop not in self._flushing
            if schedule:
                self._flushing.add(loop)
        if schedule:
            loop.call_soon(self._flush, loop)
        if deadline is not None:
            handle = loop.call_later(max(0.0, deadline - time.monotonic()), _expire, request)
            request.future.add_done_callback(lambda _: handle.cancel())
        return request.future

    def try_now(
        self,
        feeds: dict[str, np.ndarray],
        rows: int,
        deadline: float | None,
        arrived: float | None = None,
    ) -> Outputs | None:
        """Run validated `feeds` at once, in the caller, when the request would have batched
        alone anyway (see the module docstring); None means `submit` it instead.

        Raises `InferenceError` for this request only: UNAVAILABLE when the batcher is
        stopping, DEADLINE_EXCEEDED when `deadline` has passed, RESOURCE_EXHAUSTED when it
        has waited past the queue budget since `arrived`, or the run's own error.
        """
        if self._queue or not self._policy.run_alone():
            return None
        if not self._accepting:
            raise InferenceError(ErrorCode.UNAVAILABLE, "model version is shutting down")
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise _deadline_error()
        if arrived is not None and self._policy.overdue(now - arrived):
            raise self._overdue(now - arrived)
        self._metrics.queue_wait.observe(0.0)
        return self._compute(feeds, rows, 1)

    def _refuse(self, code: ErrorCode) -> InferenceError:
        """The error refusing a request before it queued (`BatchPolicy.refusal`), counted."""
        self._metrics.refused[code].inc()
        wait = self._policy.expected_wait(self._queued_rows) * 1000
        if code is ErrorCode.DEADLINE_EXCEEDED:
            return InferenceError(
                code, f"deadline cannot be met: about {wait:.0f} ms of queued work ahead"
            )
        budget = self._policy.queue_budget * 1000
        return InferenceError(
            code, f"queue budget exceeded: about {wait:.0f} ms of queued work ahead "
            f"(queue_budget_ms {budget:.0f}); retry later",
        )  # fmt: skip

    def _overdue(self, waited: float) -> InferenceError:
        """The error failing a request that waited past the budget before its batch, counted
        with the budget's other refusals."""
        self._metrics.refused[ErrorCode.RESOURCE_EXHAUSTED].inc()
        budget = self._policy.queue_budget * 1000
        return InferenceError(
            ErrorCode.RESOURCE_EXHAUSTED, f"queue budget exceeded: waited {waited * 1000:.0f} ms "
            f"before its batch (queue_budget_ms {budget:.0f}); retry later",
        )  # fmt: skip

    def stop(self) -> None:
        """Refuse new work (UNAVAILABLE); queued requests still run, then the worker ends."""
        with self._cond:
            self._accepting = False
            self._stopping = True
            self._cond.notify()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker to finish the queue; True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # --- inline, on an event loop -----------------------------------------------------------

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the next batch here on `loop`, or hand the queue to the worker thread."""
        with self._cond:
            self._flushing.discard(loop)
            if not self._queue:
                return
            if self._stopping or not self._policy.inline:
                self._cond.notify()  # the worker takes over (and drains, when stopping)
                return
            wait = self._policy.wait_time(
                self._queued_rows, self._queue[0].enqueued, time.monotonic()
            )
            batch = self._take() if wait <= 0 else []
            if batch:
                self._policy.observe_company(len(batch))
            again = bool(self._queue)
            if again:
                self._flushing.add(loop)
        if wait > 0:
            loop.call_later(wait, self._flush, loop)
            return
        if again:
            loop.call_soon(self._flush, loop)  # what is left goes in the next iteration
        self._execute_safely(batch, loop)

    # --- worker thread -----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    wait: float | None = None
                    if self._queue and (self._stopping or not self._policy.inline):
                        now = time.monotonic()
                        wait = self._policy.wait_time(
                            self._queued_rows, self._queue[0].enqueued, now
                        )
                        if wait <= 0 or self._stopping:
                            break
                    elif self._queue:
                        self._hand_to_loops()  # batches got cheap: the loops run them
                    elif self._stopping:
                        return
                    self._worker_waiting = True
                    self._cond.wait(wait)
                    self._worker_waiting = False
                batch = self._take()
            self._execute_safely(batch, None)

    def _hand_to_loops(self) -> None:
        """Schedule a flush on every loop with queued requests; the caller holds the lock."""
        for loop in {r.loop for r in self._queue} - self._flushing:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(self._flush, loop)
                self._flushing.add(loop)

    def _take(self) -> list[PendingRequest]:
        """The next batch off the queue; the caller holds the lock."""
        batch = self._policy.take(self._queue)
        self._queued_rows -= sum(r.rows for r in batch)
        return batch

    def _execute_safely(
        self, batch: list[PendingRequest], here: asyncio.AbstractEventLoop | None
    ) -> None:
        try:
            _deliver_all(self._execute(batch), here)
        except Exception:  # never let a batch go unanswered, nor the worker die
            log.exception("batch failed")
            error = InferenceError(ErrorCode.INTERNAL, "batch failed")
            _deliver_all([(r, None, error) for r in batch], here)

    def _execute(self, batch: list[PendingRequest]) -> list[Result]:
        now = time.monotonic()
        live: list[PendingRequest] = []
        results: list[Result] = []
        overdue = self._policy.overdue
        for request in batch:
            if request.abandoned:
                continue
            if request.deadline is not None and request.deadline <= now:
                results.append((request, None, _deadline_error()))
            elif overdue(now - request.arrived):
                results.append((request, None, self._overdue(now - request.arrived)))
            else:
                live.append(request)
        if live:
            for request in live:
                self._metrics.queue_wait.observe(now - request.enqueued)
            results.extend(self._run_batch(live))
        return results

    def _run_batch(self, live: list[PendingRequest]) -> list[Result]:
        sizes = [r.rows for r in live]
        if len(live) == 1:
            feeds = live[0].feeds
        else:
            feeds = {n: np.concatenate([r.feeds[n] for r in live]) for n in self._input_names}
        try:
            outputs = self._compute(feeds, sum(sizes), len(live))
            pieces = split_outputs(outputs, sizes)
        except InferenceError as exc:
            if len(live) > 1 and exc.code is ErrorCode.INVALID_ARGUMENT:
                # One request's values broke the run: answer each alone so that only the
                # culprit fails and the others of the batch are unaffected.
                return [result for r in live for result in self._run_batch([r])]
            return [(r, None, exc) for r in live]
        except Exception as exc:
            log.exception("model run failed")
            error = InferenceError(ErrorCode.INTERNAL, f"model run failed: {exc}")
            return [(r, None, error) for r in live]
        return [(r, piece, None) for r, piece in zip(live, pieces, strict=True)]

    def _compute(self, feeds: dict[str, np.ndarray], rows: int, requests: int) -> Outputs:
        """One ONNX Runtime run for `requests` requests, timed and recorded; successful ones
        are counted as executions and go to the observer."""
        started = time.monotonic()
        try:
            outputs = self._run(feeds)
        finally:
            elapsed = time.monotonic() - started
            self._policy.observe(elapsed)
            self._metrics.compute.observe(elapsed)
            self._metrics.batch_rows.observe(rows)
        self._metrics.executions.observe(rows, requests, elapsed)
        if self._observe is not None:
            self._observe(feeds, outputs)  # must not raise nor block: the drift monitor's
        return outputs


def _deadline_error() -> InferenceError:
    return InferenceError(ErrorCode.DEADLINE_EXCEEDED, "deadline exceeded while queued")


def _expire(request: PendingRequest) -> None:
    """Runs on the request's loop when its deadline passes before its batch ran."""
    request.abandoned = True
    if not request.future.done():
        request.future.set_exception(_deadline_error())


def _deliver_all(results: list[Result], here: asyncio.AbstractEventLoop | None) -> None:
    """Hand results to their loops: directly on `here` (the loop the batch ran on), else
    with one thread-safe callback per loop, not per request."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Result]] = {}
    for item in results:
        by_loop.setdefault(item[0].loop, []).append(item)
    for loop, items in by_loop.items():
        if loop is here:
            _resolve(items)
            continue
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_resolve, items)


def _resolve(items: list[Result]) -> None:
    for request, outputs, error in items:
        if request.future.done():
            continue
        if error is not None:
            request.future.set_exception(error)
        else:
            request.future.set_result(outputs)  # type: ignore[arg-type]
