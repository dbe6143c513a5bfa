"""What one inference request may declare, whatever carried it: checked before any codec
allocates memory for a tensor.

A request declares each input's shape before its data; a shape is a claim, not a fact, so
every codec takes it through one `ElementBudget` per request. The product of the dimensions
is computed on Python integers (it cannot overflow), and refused above the request's
element limit before NumPy sees it; a zero dimension does not excuse the others, since NumPy
refuses shapes whose non-zero dimensions multiply past its own index range.

BYTES elements have a smaller limit of their own: each one is a Python object, made and
converted to `str` by a loop on the event loop, about a microsecond apiece, where a number
costs nothing per element (docs/hardening.md).
"""

from __future__ import annotations

from typing import Any

from modelgate.gateway.core.errors import invalid

# NumPy's limit, and Triton's: a tensor has at most 64 dimensions.
MAX_DIMS = 64


class ElementBudget:
    """The elements, and the BYTES elements among them, one request may still declare
    across all its inputs.

    `take` checks one input's declared shape and charges its element count; the caller
    allocates only after it returns.
    """

    __slots__ = ("_elements", "_strings", "max_elements", "max_strings")

    def __init__(self, max_elements: int, max_strings: int) -> None:
        self.max_elements = max_elements
        self.max_strings = max_strings
        self._elements = max_elements
        self._strings = max_strings

    def take(self, name: str, datatype: str, shape: Any) -> tuple[tuple[int, ...], int]:
        """`shape` as a tuple of ints and its element count; INVALID_ARGUMENT when it is not
        a list of at most 64 non-negative integers, or declares more than the request may
        still hold."""
        if type(shape) is not list and type(shape) is not tuple:
            raise invalid(f"input {name!r}: shape must be a list of non-negative integers")
        if len(shape) > MAX_DIMS:
            raise invalid(
                f"input {name!r}: shape has {len(shape)} dimensions, at most {MAX_DIMS} allowed"
            )
        size = 1  # of the non-zero dimensions
        count = 1
        for dim in shape:
            if type(dim) is not int or dim < 0:  # bool and float are not dimensions
                raise invalid(f"input {name!r}: shape must be a list of non-negative integers")
            if dim:
                size *= dim
            count *= dim
        # `size` bounds what NumPy must index, `count` what the request still may hold.
        if size > self.max_elements or count > self._elements:
            raise invalid(
                f"input {name!r}: shape {list(shape)} is too large: a request may hold at "
                f"most {self.max_elements} elements in all (max_request_elements)"
            )
        if datatype == "BYTES":
            if count > self._strings:
                raise invalid(
                    f"input {name!r}: shape {list(shape)} is too large: a request may hold "
                    f"at most {self.max_strings} BYTES elements in all (max_request_strings)"
                )
            self._strings -= count
        self._elements -= count
        return tuple(shape), count
