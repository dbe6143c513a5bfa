"""The HTTP body rules on their own: inflating within a limit, and choosing an answer's
coding from Accept-Encoding."""

from __future__ import annotations

import gzip
import zlib

import pytest

from modelgate.gateway.frontends.http_wire import HttpError, compress, inflate, response_coding


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_inflate_allows_exactly_the_limit(coding: str) -> None:
    data = b"x" * 1000
    packed = compress(data, coding)
    assert inflate(packed, coding, 1000) == data
    with pytest.raises(HttpError) as err:
        inflate(packed, coding, 999)
    assert err.value.status == 413


def test_inflate_counts_every_gzip_member_against_the_limit() -> None:
    packed = gzip.compress(b"a" * 600) + gzip.compress(b"b" * 600)
    assert inflate(packed, "gzip", 1200) == b"a" * 600 + b"b" * 600
    with pytest.raises(HttpError) as err:
        inflate(packed, "gzip", 1199)
    assert err.value.status == 413


def test_raw_deflate_is_accepted_as_deflate() -> None:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    packed = compressor.compress(b"raw" * 10) + compressor.flush()
    assert inflate(packed, "deflate", 100) == b"raw" * 10


@pytest.mark.parametrize(
    ("accept", "coding"),
    [
        (None, None),
        ("", None),
        ("gzip", "gzip"),
        ("deflate", "deflate"),
        ("gzip, deflate, br", "gzip"),
        ("deflate, gzip", "gzip"),
        ("DEFLATE;q=0.9, gzip;q=0.8", "deflate"),
        ("gzip;q=0, deflate;q=0", None),
        ("gzip; q=0.5, deflate; q=0.5", "gzip"),
        ("gzip;q=nonsense, deflate", "deflate"),
        ("br, zstd, identity, *", None),
    ],
)
def test_response_coding_follows_the_clients_preference(
    accept: str | None, coding: str | None
) -> None:
    headers = {} if accept is None else {b"accept-encoding": accept.encode()}
    assert response_coding(headers) == coding
