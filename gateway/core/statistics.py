"""The statistics extension's figures for a model version, from what the gateway counts.

Triton's clients and dashboards read these (`GET /v2/models/{m}/stats`, gRPC
ModelStatistics). They come from the version's `VersionMetrics`, the same counts the
Prometheus endpoint exports, so the two never disagree:

- success / fail: requests answered by the version, by outcome, with their time from
  reaching the core to the answer;
- queue: time waiting in the micro-batcher (a request run at once waited 0);
- compute_infer: per request, the ONNX Runtime run of the batch it was in;
- inference_count / execution_count: rows and runs of successful model runs, and per batch
  size (rows) the runs and their time (batch_stats).

compute_input and compute_output are not timed apart from the rest (decoding and encoding),
so they take zero time, but they count what compute_infer counts: Triton's clients require
the three counts to agree (perf_analyzer stops with "Server side statistics compute counts
must be the same"). cache_hit / cache_miss stay zero: there is no response cache.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from modelgate.gateway.core.types import BatchStatistics, Duration, ModelStatistics
from modelgate.gateway.metrics import VersionMetrics

_NS = 1e9


def _duration(count: int, seconds: float) -> Duration:
    return Duration(int(count), round(seconds * _NS))


def version_statistics(metrics: VersionMetrics) -> ModelStatistics:
    """The statistics of the version `metrics` belongs to, as of now."""
    answered = {True: 0, False: 0}  # succeeded? -> requests
    seconds = {True: 0.0, False: 0.0}
    for (_, outcome), observations in dict(metrics.outcomes).items():
        counts, total = observations.snapshot()
        answered[outcome == "OK"] += int(counts.sum())
        seconds[outcome == "OK"] += total
    queue_counts, queue_seconds = metrics.queue_wait.snapshot()
    runs = metrics.executions.snapshot()
    return ModelStatistics(
        name=metrics.model,
        version=metrics.version,
        last_inference_ms=round(metrics.last_request * 1000),
        inference_count=runs.rows,
        execution_count=runs.runs,
        success=_duration(answered[True], seconds[True]),
        fail=_duration(answered[False], seconds[False]),
        queue=_duration(int(queue_counts.sum()), queue_seconds),
        compute_infer=_duration(runs.requests, runs.request_seconds),
        compute_input=Duration(runs.requests, 0),
        compute_output=Duration(runs.requests, 0),
        batches=tuple(
            BatchStatistics(
                size, _duration(count, run_seconds), Duration(count, 0), Duration(count, 0)
            )
            for size, (count, run_seconds) in sorted(runs.by_size.items())
        ),
    )


def merged_statistics(parts: Iterable[Sequence[ModelStatistics]]) -> list[ModelStatistics]:
    """Several serving processes' statistics as one (`--workers`): per version, counts and
    times summed (per batch size too), the latest last inference; in first-seen order."""
    out: dict[tuple[str, str], ModelStatistics] = {}
    for part in parts:
        for stats in part:
            key = (stats.name, stats.version)
            old = out.get(key)
            out[key] = stats if old is None else _sum(old, stats)
    return list(out.values())


def _sum(a: ModelStatistics, b: ModelStatistics) -> ModelStatistics:
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, Duration):
            changes[f.name] = _plus(x, y)
        elif f.name == "last_inference_ms":
            changes[f.name] = max(x, y)
        elif isinstance(x, int):
            changes[f.name] = x + y
    sizes: dict[int, BatchStatistics] = {}
    for batch in (*a.batches, *b.batches):
        old = sizes.get(batch.batch_size)
        sizes[batch.batch_size] = batch if old is None else BatchStatistics(
            batch.batch_size,
            _plus(old.compute_infer, batch.compute_infer),
            _plus(old.compute_input, batch.compute_input),
            _plus(old.compute_output, batch.compute_output),
        )  # fmt: skip
    changes["batches"] = tuple(sizes[size] for size in sorted(sizes))
    return dataclasses.replace(a, **changes)


def _plus(x: Duration, y: Duration) -> Duration:
    return Duration(x.count + y.count, x.ns + y.ns)
