"""Seeded mutations: of JSON documents (structure-aware), of raw bytes, of protobuf wire bytes.

Every function takes the `random.Random` of one case, so a case is a pure function of the
run's seed, its decoder and its index.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable
from typing import Any

from loadtest.fuzz.values import (
    FIELD_NAMES,
    FLOATS,
    INTS,
    MAX_BODY,
    SPECIAL_NUMBERS,
    STRINGS,
    Raw,
    datatype,
    dims,
    interesting,
)

# --- JSON documents -------------------------------------------------------------------


Slot = tuple[Any, Any]  # (container, key or index) naming one node of a document


def _slots(doc: Any, limit: int = 5000) -> tuple[list[Slot], list[Slot]]:
    """(structural slots, data slots): elements of lists longer than 4 count as data."""
    structural: list[Slot] = []
    data: list[Slot] = []
    stack = [doc]
    while stack and len(structural) + len(data) < limit:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                structural.append((node, key))
                stack.append(value)
        elif isinstance(node, list):
            target = data if len(node) > 4 else structural
            n = len(node)
            for i in range(n) if n <= 64 else (*range(32), n - 1):  # a long list's head
                target.append((node, i))
                if isinstance(node[i], dict | list):
                    stack.append(node[i])
    return structural, data


def _all_slots(doc: Any) -> list[Slot]:
    structural, data = _slots(doc)
    return structural + data


def _dicts_with(doc: Any, key: str) -> list[dict[str, Any]]:
    found = []
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if key in node:
                found.append(node)
            stack.extend(v for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list) and len(node) <= 64:
            stack.extend(v for v in node if isinstance(v, dict | list))
    return found


def mutate_json(doc: Any, rng: random.Random, ops: list[str], rounds: int = 0) -> Any:
    """Apply 1-4 structure-aware mutations to `doc` in place (the root may be replaced, so
    use the result); each applied operation's name is appended to `ops`."""
    for _ in range(rounds or rng.choice((1, 1, 1, 2, 2, 3, 4))):
        name, op = rng.choice(_JSON_OPS)
        doc = op(doc, rng)
        ops.append(name)
    return fit(doc)


def fit(doc: Any, limit: int = MAX_BODY) -> Any:
    """`doc` with lists and strings cut so that it serializes to about `limit` bytes at
    most (mutations share and multiply values: without this a few could make gigabytes)."""
    budget = limit

    def walk(node: Any) -> Any:
        nonlocal budget
        if isinstance(node, list):
            for i in range(len(node)):
                if budget <= 0:
                    del node[i:]
                    break
                node[i] = walk(node[i])
        elif isinstance(node, dict):
            for key in list(node):
                node[key] = walk(node[key]) if budget > 0 else None
        elif isinstance(node, str):
            cost = len(node) * (1 if node.isascii() else 12)
            if cost > budget:
                node = node[: max(budget // 12, 0)]
            budget -= cost + 2
        else:
            budget -= len(node.text) if isinstance(node, Raw) else 8
        return node

    return walk(doc)


def _pick(doc: Any, rng: random.Random) -> Slot | None:
    structural, data = _slots(doc)
    pool = structural if structural and (not data or rng.random() < 0.75) else data
    return rng.choice(pool) if pool else None


def _replace(doc: Any, rng: random.Random) -> Any:
    slot = _pick(doc, rng)
    if slot is None:
        return interesting(rng)
    container, key = slot
    container[key] = interesting(rng)
    return doc


def _delete(doc: Any, rng: random.Random) -> Any:
    slot = _pick(doc, rng)
    if slot is not None:
        container, key = slot
        del container[key]
    return doc


def _retype(doc: Any, rng: random.Random) -> Any:
    slot = _pick(doc, rng)
    if slot is None:
        return [doc]
    container, key = slot
    value = container[key]
    if isinstance(value, bool | int | float):
        container[key] = rng.choice((str(value), [value], {"value": value}, not value))
    elif isinstance(value, str):
        hexed = value.encode("utf-8", "surrogatepass").hex()
        container[key] = rng.choice((len(value), [value], {value: value}, hexed))
    elif isinstance(value, list):
        container[key] = rng.choice(({str(i): v for i, v in enumerate(value)}, len(value), ""))
    elif isinstance(value, dict):
        container[key] = rng.choice((list(value.values()), list(value), None))
    else:
        container[key] = rng.choice((0, "", [], {}))
    return doc


def _number(doc: Any, rng: random.Random) -> Any:
    numbers = [
        (c, k)
        for c, k in _all_slots(doc)
        if isinstance(c[k], int | float) and not isinstance(c[k], bool)
    ]
    if not numbers:
        return _replace(doc, rng)
    container, key = rng.choice(numbers)
    value = container[key]
    how = rng.randrange(8)
    if how < 3:
        container[key] = (value + 1, value - 1, -value)[how]
    elif how == 3 and not (isinstance(value, float) and not math.isfinite(value)):
        container[key] = value * 2 ** rng.randrange(1, 70)
    elif how == 4 and abs(value) < 2**60:
        container[key] = float(value) + 0.5
    else:
        container[key] = rng.choice((*INTS[-8:], *FLOATS, *SPECIAL_NUMBERS))
    return doc


def _duplicate(doc: Any, rng: random.Random) -> Any:
    slot = _pick(doc, rng)
    if slot is None:
        return doc
    container, key = slot
    if isinstance(container, list):
        container.insert(key, container[key])
    else:
        container[rng.choice(FIELD_NAMES)] = container[key]
    return doc


def _add_field(doc: Any, rng: random.Random) -> Any:
    dicts = [c for c, _ in _slots(doc)[0] if isinstance(c, dict)]
    if isinstance(doc, dict):
        dicts.append(doc)
    if not dicts:
        return doc
    target = rng.choice(dicts)
    name = rng.choice(FIELD_NAMES) if rng.random() < 0.8 else rng.choice(STRINGS)
    target[name] = interesting(rng)
    return doc


def _resize(doc: Any, rng: random.Random) -> Any:
    lists = [c[k] for c, k in _all_slots(doc) if isinstance(c[k], list)]
    if isinstance(doc, list):
        lists.append(doc)
    if not lists:
        return doc
    target = rng.choice(lists)
    how = rng.randrange(4)
    if how == 0:
        target.clear()
    elif how == 1 and target:
        del target[rng.randrange(len(target)) :]
    elif how == 2 and target:
        target.extend(target * rng.choice((1, 2, 10, 1000)))
        del target[100_000:]
    else:
        target.append(rng.choice((target[:], 0, "x", None)) if target else 0)
    return doc


def _shape(doc: Any, rng: random.Random) -> Any:
    found = _dicts_with(doc, "shape")
    if not found:
        return _replace(doc, rng)
    rng.choice(found)["shape"] = dims(rng)
    return doc


def _datatype(doc: Any, rng: random.Random) -> Any:
    found = _dicts_with(doc, "datatype")
    if not found:
        return _replace(doc, rng)
    rng.choice(found)["datatype"] = datatype(rng)
    return doc


def _parameter(doc: Any, rng: random.Random) -> Any:
    """Set one of the parameters the decoders read (or an unknown one) to a hostile value."""
    holders = _dicts_with(doc, "name") + ([doc] if isinstance(doc, dict) else [])
    if not holders:
        return doc
    holder = rng.choice(holders)
    params = holder.get("parameters")
    if not isinstance(params, dict):
        params = holder["parameters"] = {} if rng.random() < 0.8 else interesting(rng)
        if not isinstance(params, dict):
            return doc
    key = rng.choice(("binary_data_size", "binary_data", "binary_data_output", "timeout", "x", ""))
    params[key] = rng.choice((interesting(rng), rng.choice(INTS), True, False, None))
    return doc


_JSON_OPS: tuple[tuple[str, Callable[[Any, random.Random], Any]], ...] = (
    ("replace", _replace),
    ("replace", _replace),
    ("delete", _delete),
    ("retype", _retype),
    ("number", _number),
    ("number", _number),
    ("duplicate", _duplicate),
    ("add-field", _add_field),
    ("resize", _resize),
    ("shape", _shape),
    ("shape", _shape),
    ("datatype", _datatype),
    ("parameter", _parameter),
    ("parameter", _parameter),
)


# --- bytes ----------------------------------------------------------------------------


def mutate_bytes(data: bytes, rng: random.Random, ops: list[str], rounds: int = 0) -> bytes:
    """Apply 1-4 byte-level mutations (flip, overwrite, delete, duplicate, insert, truncate,
    extend); the result stays under MAX_BODY bytes."""
    buf = bytearray(data)
    for _ in range(rounds or rng.choice((1, 1, 2, 3, 4))):
        name, op = rng.choice(_BYTE_OPS)
        op(buf, rng)
        ops.append(name)
        del buf[MAX_BODY:]
    return bytes(buf)


def _flip(buf: bytearray, rng: random.Random) -> None:
    if buf:
        buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)


def _overwrite(buf: bytearray, rng: random.Random) -> None:
    if buf:
        at = rng.randrange(len(buf))
        piece = rng.choice(_BYTE_PIECES)
        buf[at : at + len(piece)] = piece


def _erase(buf: bytearray, rng: random.Random) -> None:
    if buf:
        at = rng.randrange(len(buf))
        del buf[at : at + rng.choice((1, 2, 4, 8, 64, 1024))]


def _repeat(buf: bytearray, rng: random.Random) -> None:
    if buf:
        at = rng.randrange(len(buf))
        piece = buf[at : at + rng.choice((1, 4, 16, 256))]
        buf[at:at] = piece * rng.choice((1, 2, 16, 1000))


def _insert(buf: bytearray, rng: random.Random) -> None:
    at = rng.randrange(len(buf) + 1)
    piece = (
        rng.choice(_BYTE_PIECES)
        if rng.random() < 0.6
        else rng.randbytes(rng.choice((1, 4, 16, 1000)))
    )
    buf[at:at] = piece


def _truncate(buf: bytearray, rng: random.Random) -> None:
    if buf:
        del buf[rng.randrange(len(buf)) :]


def _extend(buf: bytearray, rng: random.Random) -> None:
    buf.extend(rng.randbytes(rng.choice((1, 3, 4, 100, 65536))))


_BYTE_PIECES = (
    *(b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff\xff\xff", b"\x00\x00\x00\x80"),
    *(b"\xc3", b"\xed\xa0\x80", b'"', b"\\", b"{", b"}", b"[", b"]", b",", b":"),
    *(b"-", b"9999999999999999999999", b"1e999", b"NaN", b"\r\n", b"\xef\xbb\xbf"),
    struct.pack("<I", 0x7FFFFFFF),
    struct.pack("<q", -1),
)

_BYTE_OPS: tuple[tuple[str, Callable[[bytearray, random.Random], None]], ...] = (
    ("flip", _flip),
    ("flip", _flip),
    ("overwrite", _overwrite),
    ("overwrite", _overwrite),
    ("erase", _erase),
    ("repeat", _repeat),
    ("insert", _insert),
    ("truncate", _truncate),
    ("extend", _extend),
)


# --- protobuf wire bytes ----------------------------------------------------------------


def varint(value: int) -> bytes:
    """Protobuf's base-128 varint of a value (negative: its 64-bit two's complement)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def wire_field(rng: random.Random) -> bytes:
    """One protobuf field with a random number and wire type and a hostile payload: a
    length that lies, invalid UTF-8 where a string goes, an unterminated varint..."""
    number = rng.choice((1, 2, 3, 4, 5, 6, 7, 8, 15, 16, 536870911, 0))
    wire = rng.choice((0, 1, 2, 2, 2, 3, 4, 5, 6, 7))
    tag = varint(number << 3 | wire)
    if wire == 0:
        return tag + rng.choice((varint(rng.choice(INTS)), b"\xff" * 11, b"\x80"))
    if wire == 1:
        return tag + rng.randbytes(rng.choice((8, 3)))
    if wire == 5:
        return tag + rng.randbytes(rng.choice((4, 1)))
    if wire == 2:
        payload = rng.choice(
            (b"\xff\xfe", b"\xed\xa0\x80", b"light", b"", rng.randbytes(16), b"\x0a\x05light")
        )
        length = rng.choice((len(payload),) * 3 + (len(payload) + 1, 2**31, 2**63, 2**64 - 1))
        return tag + varint(length) + payload
    return tag  # group start/end, or a reserved wire type


def mutate_wire(data: bytes, rng: random.Random, ops: list[str]) -> bytes:
    """Insert protobuf fields (see `wire_field`) at the end, the start or anywhere."""
    fields = b"".join(wire_field(rng) for _ in range(rng.choice((1, 1, 2, 3))))
    where = rng.randrange(3)
    ops.append(("append-field", "prepend-field", "splice-field")[where])
    if where == 0:
        return data + fields
    if where == 1:
        return fields + data
    at = rng.randrange(len(data) + 1)
    return data[:at] + fields + data[at:]
