"""The limits every codec applies to a request's declared shapes, and client timeouts."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelgate.gateway.core.errors import ErrorCode, InferenceError
from modelgate.gateway.core.limits import MAX_DIMS, ElementBudget
from modelgate.gateway.core.validation import MAX_TIMEOUT_SECONDS, timeout_seconds

DIMS = st.integers(0, 5) | st.integers(-(2**64), 2**70) | st.booleans() | st.floats()
SHAPES = st.lists(DIMS, max_size=70) | st.tuples(DIMS, DIMS) | st.none() | st.text(max_size=3)


def refused(call: Any, *words: str) -> None:
    with pytest.raises(InferenceError) as info:
        call()
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    for word in words:
        assert word in info.value.message, info.value.message


@given(shape=SHAPES, datatype=st.sampled_from(["FP32", "BYTES"]))
def test_a_shape_is_taken_only_when_numpy_can_make_it_within_the_limits(
    shape: Any, datatype: str
) -> None:
    budget = ElementBudget(max_elements=1000, max_strings=100)
    try:
        taken, count = budget.take("x", datatype, shape)
    except InferenceError as exc:
        assert exc.code is ErrorCode.INVALID_ARGUMENT
        return
    assert taken == tuple(shape)
    assert count == math.prod(shape) <= (100 if datatype == "BYTES" else 1000)
    # NumPy accepts the shape (checked without allocating: a broadcast view of one value)
    assert np.broadcast_to(np.float32(0), taken).shape == taken


def test_the_budget_counts_every_input_of_a_request() -> None:
    budget = ElementBudget(max_elements=100, max_strings=10)
    assert budget.take("a", "FP32", [10, 6]) == ((10, 6), 60)
    assert budget.take("b", "BYTES", [2, 5]) == ((2, 5), 10)
    refused(lambda: budget.take("c", "BYTES", [1]), "'c'", "max_request_strings")
    assert budget.take("d", "INT64", (30,)) == ((30,), 30)
    refused(lambda: budget.take("e", "FP32", [1]), "'e'", "100 elements", "max_request_elements")
    assert budget.take("f", "FP32", [0, 7]) == ((0, 7), 0)  # nothing left, and nothing asked


def test_a_zero_dimension_excuses_no_other() -> None:
    budget = ElementBudget(max_elements=1 << 24, max_strings=1 << 18)
    refused(lambda: budget.take("x", "FP32", [0, 4611686018427387904]), "too large")
    refused(lambda: budget.take("x", "FP32", [0, 1 << 13, 1 << 13, 1 << 13]), "too large")
    assert budget.take("x", "FP32", [0, 1 << 24]) == ((0, 1 << 24), 0)


def test_dimensions_are_at_most_64_non_negative_integers() -> None:
    budget = ElementBudget(max_elements=100, max_strings=100)
    assert budget.take("x", "FP32", [1] * MAX_DIMS)[1] == 1
    refused(lambda: budget.take("x", "FP32", [1] * (MAX_DIMS + 1)), "65 dimensions")
    for shape in ([-1], [True], [1.0], ["2"], None, "12", {"0": 1}):
        refused(lambda shape=shape: budget.take("x", "FP32", shape), "non-negative integers")


@pytest.mark.parametrize(
    ("value", "unit", "seconds"),
    [
        (None, "microseconds", None),
        (1, "microseconds", 1e-6),
        (2_500, "milliseconds", 2.5),
        (2**64 - 1, "microseconds", MAX_TIMEOUT_SECONDS),  # a client's "forever": capped
        (2**64 - 1, "milliseconds", MAX_TIMEOUT_SECONDS),
    ],
)
def test_timeouts_in_their_units_capped_at_a_day(
    value: int | None, unit: str, seconds: float | None
) -> None:
    assert timeout_seconds(value, unit) == seconds


@pytest.mark.parametrize("value", [0, -1, 2**64, 10**400, True, 1.5, "5"])
def test_timeouts_beyond_64_bits_or_not_positive_integers_are_refused(value: Any) -> None:
    refused(lambda: timeout_seconds(value, "milliseconds", "header x"), "header x", "64 bits")
