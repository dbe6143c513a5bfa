"""JSON `null` in a floating-point input is a missing value (NaN); elsewhere it is refused."""

from __future__ import annotations

import numpy as np
import pytest

from modelgate.gateway.codecs.tensors import array_from_json, array_from_nested
from modelgate.gateway.core.errors import InferenceError
from modelgate.gateway.core.limits import ElementBudget


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_null_is_nan_in_floating_point_inputs(datatype: str) -> None:
    values = array_from_json("x", datatype, (2, 2), 4, [[1.5, None], [None, 2]])
    assert values.dtype == {"FP32": np.float32, "FP64": np.float64}[datatype]
    assert np.isnan(values).tolist() == [[False, True], [True, False]]
    assert values[0, 0] == 1.5 and values[1, 1] == 2.0
    nested = array_from_nested("x", datatype, [[None, 3]], ElementBudget(100, 100))
    assert nested.shape == (1, 2) and np.isnan(nested[0, 0]) and nested[0, 1] == 3


@pytest.mark.parametrize(
    ("datatype", "data", "problem"),
    [
        ("INT64", [1, None], "does not hold INT64 values"),
        ("BOOL", [True, None], "does not hold BOOL values"),
        ("FP32", ["1.5", None], "does not hold FP32 values"),
        ("FP32", [True, None], "does not hold FP32 values"),
        ("FP32", [[1.0], None], "not a regular array"),
        ("FP32", [1e300, None], "out of range for FP32"),
        ("FP64", [10**400, None], "out of range for FP64"),
    ],
)
def test_null_elsewhere_or_beside_a_non_number_is_refused(
    datatype: str, data: list[object], problem: str
) -> None:
    with pytest.raises(InferenceError, match=problem):
        array_from_json("x", datatype, (2,), 2, data)
