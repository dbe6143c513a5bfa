"""Statistics of several workers as one (the statistics extension with --workers)."""

from __future__ import annotations

from modelgate.gateway.core.statistics import merged_statistics
from modelgate.gateway.core.types import BatchStatistics, Duration, ModelStatistics


def _stats(version: str, n: int, last: int, sizes: dict[int, int]) -> ModelStatistics:
    return ModelStatistics(
        "m", version, last, n, n, Duration(n, 10 * n), Duration(1, 5), Duration(n, n),
        Duration(n, 2 * n),
        tuple(BatchStatistics(size, Duration(runs, runs)) for size, runs in sizes.items()),
        compute_input=Duration(n, 0),
    )  # fmt: skip


def test_counts_and_times_add_up_per_version_and_batch_size() -> None:
    one = [_stats("1", 3, 100, {1: 3}), _stats("2", 1, 50, {1: 1})]
    two = [_stats("1", 4, 90, {1: 2, 2: 1})]
    merged = merged_statistics([one, two, []])
    assert [(s.name, s.version) for s in merged] == [("m", "1"), ("m", "2")]
    first = merged[0]
    assert first.last_inference_ms == 100
    assert (first.inference_count, first.execution_count) == (7, 7)
    assert first.success == Duration(7, 70) and first.fail == Duration(2, 10)
    assert first.compute_input == Duration(7, 0)
    assert first.batches == (
        BatchStatistics(1, Duration(5, 5)),
        BatchStatistics(2, Duration(1, 1)),
    )
    assert merged[1] == one[1]
