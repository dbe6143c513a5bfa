"""JSON tensor data to arrays: strict about what a number is, in memory bounded by the
request (docs/hardening.md cause 9)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from conftest import peak_growth
from modelgate.gateway.codecs.tensors import array_from_json, array_from_nested
from modelgate.gateway.core.errors import InferenceError
from modelgate.gateway.core.limits import ElementBudget


@pytest.mark.parametrize("datatype", ["FP32", "INT16"])
@pytest.mark.parametrize("letter", ["x", "1"])
def test_a_long_string_among_numbers_is_refused_without_a_string_array(
    datatype: str, letter: str
) -> None:
    # 10,000 numbers and one 10,000-character string: NumPy's inference made a string array
    # of 10,001 elements of 10,000 characters, 400 MB, from 30 KB of JSON.
    rows = [[1, 2.5]] * 5_000 + [[1, letter * 10_000]]
    with peak_growth() as grown:
        for call in (
            lambda: array_from_json("x", datatype, (5_001, 2), 10_002, rows),
            lambda: array_from_nested("x", datatype, rows, ElementBudget(10**6, 10**6)),
        ):
            with pytest.raises(InferenceError, match=f"does not hold {datatype} values"):
                call()
    assert grown() < 20 << 20


@pytest.mark.parametrize(
    ("datatype", "data", "words"),
    [
        ("FP32", [1.5, "2"], "does not hold FP32"),
        ("INT64", ["12", 3], "does not hold INT64"),
        ("FP32", [True, False], "does not hold FP32"),
        ("BOOL", [1, 0], "does not hold BOOL"),
        ("INT32", [1.5, 2], "does not hold INT32"),
        ("INT64", [1, [2]], "does not hold INT64|not a regular array"),
        ("FP32", [1.0, [2.0]], "does not hold FP32|not a regular array"),
        ("FP32", [[1.0], 2.0], "not a regular array"),
        ("UINT8", [1, 256], "out of range for UINT8"),
        ("UINT64", [2**64, 0], "out of range for UINT64"),
        ("FP32", [1e300, 0], "out of range for FP32"),
        ("FP32", [0, -1e39], "out of range for FP32"),
        ("FP32", [0, 10**400], "out of range for FP32"),
    ],
)
def test_what_is_not_a_number_of_the_datatype_is_refused(
    datatype: str, data: list[Any], words: str
) -> None:
    with pytest.raises(InferenceError, match=words):
        array_from_json("x", datatype, (2,), 2, data)


@pytest.mark.parametrize(
    ("datatype", "data", "expected"),
    [
        ("FP32", [[1, 2.5]], np.array([[1, 2.5]], np.float32)),
        # The largest FP32 values, and doubles that round to them, are in range.
        (
            "FP32",
            [[3.4028235e38, -3.4028235e38]],
            np.array([[3.4028235e38, -3.4028235e38]], np.float32),
        ),
        ("FP64", [[1e300, None]], np.array([[1e300, np.nan]])),
        ("UINT64", [[2**64 - 1, 0]], np.array([[2**64 - 1, 0]], np.uint64)),
        ("INT8", [[-128, 127]], np.array([[-128, 127]], np.int8)),
        ("BOOL", [[True, False]], np.array([[True, False]])),
    ],
)
def test_numbers_of_the_datatype_are_taken_exactly(
    datatype: str, data: list[Any], expected: np.ndarray
) -> None:
    for values in (
        array_from_json("x", datatype, (1, 2), 2, data),
        array_from_nested("x", datatype, data, ElementBudget(100, 100)),
    ):
        assert values.dtype == expected.dtype
        np.testing.assert_array_equal(values, expected)
