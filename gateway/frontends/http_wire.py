"""HTTP matters below the V2 codec: reading a body within the size limit, the gzip and
deflate content codings both ways, and the errors only HTTP has.

Request bodies may come compressed (`Content-Encoding: gzip` or `deflate`, as tritonclient's
`request_compression_algorithm` sends them); they are inflated before anything reads them,
so the binary extension's Inference-Header-Content-Length counts decompressed bytes. The
limit on a body holds for its compressed and for its decompressed size: inflating stops one
byte past the limit (413), so a small bomb costs no more memory than a body at the limit.
Answers are compressed when `Accept-Encoding` asks (tritonclient's
`response_compression_algorithm`), unless they are too small to gain from it.
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]
Headers = dict[bytes, bytes]

# zlib's window-bits argument for each content coding: gzip framing, or zlib framing
# (what HTTP calls deflate; a raw deflate stream is accepted too, as browsers send some).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_RAW_DEFLATE = -zlib.MAX_WBITS
# Answers smaller than this go uncompressed: compressing costs more than the bytes it saves.
MIN_COMPRESSED = 1024
# Fast compression: the gateway's budget is CPU time per request, not bandwidth.
_LEVEL = 1


class HttpError(Exception):
    """An error only HTTP has (413, 415, 405...): status, message and extra headers."""

    def __init__(
        self, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def int_header(headers: Headers, name: bytes) -> int | None:
    """An integer header's value; None when absent, 400 when not an integer."""
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise HttpError(400, f"header {name.decode()} must be an integer") from None


async def read_body(
    receive: Receive, headers: Headers, limit: int, setting: str = "max_body_bytes"
) -> bytes:
    """The request body, decompressed, at most `limit` bytes both before and after; a 413
    names the `setting` that sets the limit."""
    coding = _content_coding(headers)  # refuse an unknown coding before reading
    declared = int_header(headers, b"content-length")
    if declared is not None and declared > limit:
        raise HttpError(413, f"body of {declared} bytes exceeds the limit of {limit} ({setting})")
    message = await _receive_body(receive)
    body: bytes = message.get("body", b"")
    if message.get("more_body"):
        chunks = [body]
        size = len(body)
        while message.get("more_body"):
            message = await _receive_body(receive)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"body exceeds the limit of {limit} bytes ({setting})")
            chunks.append(chunk)
        body = b"".join(chunks)
    return body if coding is None else inflate(body, coding, limit, setting)


async def _receive_body(receive: Receive) -> dict[str, Any]:
    """The next part of a body; 408 when the connection ended (or timed out) before it."""
    message = await receive()
    if message["type"] == "http.disconnect":
        raise HttpError(408, "the connection ended before the request body was complete")
    return message


def _content_coding(headers: Headers) -> str | None:
    """The body's content coding (None: as is), or 415 naming one not supported."""
    value = headers.get(b"content-encoding")
    if value is None:
        return None
    codings = [c.strip() for c in value.decode("latin-1").lower().split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in _WBITS:
        return codings[0]
    raise HttpError(
        415,
        f"Content-Encoding {value.decode('latin-1')!r} is not supported: send the body "
        "as is, or compressed with gzip or deflate",
    )


def inflate(data: bytes, coding: str, limit: int, setting: str = "max_body_bytes") -> bytes:
    """`data` decompressed; 413 past `limit` bytes (naming the `setting`), 400 when it is
    not a whole stream."""
    wbits = _WBITS[coding]
    if coding == "deflate" and not _zlib_framed(data):
        wbits = _RAW_DEFLATE
    pieces = []
    size = 0
    while True:  # gzip allows several members back to back
        inflater = zlib.decompressobj(wbits)
        try:
            piece = inflater.decompress(data, limit - size + 1)
        except zlib.error as exc:
            raise HttpError(400, f"body is not valid {coding} data: {exc}") from None
        size += len(piece)
        if size > limit:
            raise HttpError(
                413, f"decompressed body exceeds the limit of {limit} bytes ({setting})"
            )
        pieces.append(piece)
        if not inflater.eof:
            raise HttpError(400, f"body is not valid {coding} data: the stream is truncated")
        data = inflater.unused_data
        if not data or wbits != _WBITS["gzip"]:
            break
    if data:
        raise HttpError(400, f"body is not valid {coding} data: bytes after the stream's end")
    return b"".join(pieces)


def _zlib_framed(data: bytes) -> bool:
    """Whether `data` starts with a zlib header (RFC 1950: method 8, check bits)."""
    return len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0


def response_coding(headers: Headers) -> str | None:
    """The coding `Accept-Encoding` asks for among gzip and deflate (the client's highest
    q-value, gzip on a tie), or None."""
    accept = headers.get(b"accept-encoding")
    if not accept:
        return None
    best, best_q = None, 0.0
    for item in accept.decode("latin-1").lower().split(","):
        name, _, params = item.partition(";")
        name = name.strip()
        if name not in ("gzip", "deflate"):
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > best_q or (q > 0 and q == best_q and name == "gzip"):
            best, best_q = name, q
    return best


def compress(body: bytes, coding: str) -> bytes:
    """`body` in `coding` (gzip or deflate, the latter zlib-framed as HTTP means it)."""
    compressor = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WBITS[coding])
    return compressor.compress(body) + compressor.flush()
