"""Hostile values for mutations, and writing JSON that holds them.

Mutated documents may hold values JSON cannot say (NaN, integers past 64 bits, lone
surrogates, nesting deeper than any parser's recursion): `Raw` carries such a fragment as
text and `dumps` writes it as it is.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any

MAX_BODY = 4 << 20  # no mutation grows a body past this: the fuzzer stays bounded too


@dataclass(frozen=True, slots=True)
class Raw:
    """A fragment of JSON text, written as it is (it need not be valid JSON)."""

    text: str


def dumps(value: Any, ascii_only: bool = True) -> bytes:
    """`value` as JSON text; `Raw` fragments verbatim, any int, NaN and infinities as
    JavaScript writes them. Strings with lone surrogates come out as invalid UTF-8 when
    `ascii_only` is false."""
    raws: list[str] = []

    def placeholder(item: Any) -> str:
        if not isinstance(item, Raw):
            raise TypeError(f"cannot write {type(item).__name__} as JSON")
        raws.append(item.text)
        return f"{_MARK}{len(raws) - 1}{_MARK}"

    text = json.dumps(
        value, ensure_ascii=ascii_only, allow_nan=True, default=placeholder, separators=(",", ":")
    )
    if raws:  # each placeholder string came out as "\u0000<n>\u0000"
        text = _PLACEHOLDER.sub(lambda found: raws[int(found.group(1))], text)
    return text.encode("utf-8", "surrogatepass")


_MARK = "\u0000"
_PLACEHOLDER = re.compile(r'"\\u0000(\d+)\\u0000"')

INTS = (
    *(0, 1, -1, 2, 3, 7, 8, 31, 32, 33, 127, 128, 255, 256, -128, -129),
    *(32767, 32768, 65535, 65536, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**32),
    *(2**53, 2**53 + 1, 2**62, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64),
    *(10**20, -(10**20), 10**400),
)
FLOATS = (0.5, -0.0, 1e-320, 1.7976931348623157e308, -1e308, 3.4e38, 3.5e38, 65504.0, 70000.0)
_SPECIAL = ("NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" * 400, "-0", "0x10", "01")
SPECIAL_NUMBERS = tuple(Raw(text) for text in (*_SPECIAL, "1.", ".5", "1e", "+1"))
STRINGS = (
    *("", " ", "a", "0", "-1", "1e3", "NaN", "true", "null", "FP32", "BYTES", "INT64"),
    *("input", "x", "label", "probabilities", "light", "\u0000", "é", "\u202e", "\U0001d518"),
    *("\\", "%s%n%x", "../../../../etc/passwd", "\ud800", "\udc00x", "\ufeff", "\uffff"),
)
FIELD_NAMES = (
    *("name", "datatype", "shape", "data", "inputs", "outputs", "parameters", "id"),
    *("binary_data_size", "binary_data", "binary_data_output", "timeout", "instances"),
    *("signature_name", "model_name", "contents", "", "__proto__", "constructor"),
)
DATATYPES = (
    *("BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"),
    *("FP16", "FP32", "FP64", "BYTES", "BF16", "FP8", "fp32", "float32", "", "STRING"),
    "FP32\u0000",
)


def interesting(rng: random.Random) -> Any:
    """A value that has broken parsers before: extreme or special numbers, odd strings,
    empty or ragged containers, huge strings and lists, nesting deeper than recursion."""
    roll = rng.random()
    if roll < 0.2:
        return rng.choice(INTS)
    if roll < 0.3:
        return rng.choice(FLOATS)
    if roll < 0.4:
        return rng.choice(SPECIAL_NUMBERS)
    if roll < 0.6:
        return rng.choice(STRINGS)
    if roll < 0.75:
        return rng.choice((None, True, False, [], {}, [[]], [None], [[1, 2], [3]], {"": None}))
    if roll < 0.82:
        return rng.choice(("a", "\u00e9", "\U0001f4a5", "\\u0000")) * rng.choice((1000, 100_000))
    if roll < 0.88:
        return [rng.choice((0, 0.5, "a", None, [0]))] * rng.choice((1000, 10_000, 100_000))
    depth = rng.choice((64, 65, 100, 1000, 10_000, 100_000))
    if roll < 0.94:
        return Raw("[" * depth + "1" + "]" * depth)
    return Raw('{"a":' * depth + "1" + "}" * depth)


def datatype(rng: random.Random) -> str:
    return rng.choice(DATATYPES)


def dims(rng: random.Random) -> list[Any]:
    """A hostile shape: negative, huge, zero, overflowing when multiplied, or very long."""
    kind = rng.randrange(6)
    if kind == 0:
        return [rng.choice(INTS) for _ in range(rng.randrange(1, 4))]
    if kind == 1:
        return [2**31, 2**31] if rng.random() < 0.5 else [2**32, 2**32, 2**32]
    if kind == 2:
        return [1] * rng.choice((0, 33, 64, 65, 1000))
    if kind == 3:
        return [rng.choice((0, 1, 2)), rng.choice((0, 3, 32, 33))]
    if kind == 4:
        return [rng.choice((1.0, 1.5, "1", None, True, [1]))]
    return [rng.choice((-1, -2, -(2**63)))] + [1] * rng.randrange(2)
