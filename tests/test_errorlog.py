"""What the servers log for requests they do not serve: bounded whatever the request held."""

from __future__ import annotations

import logging

import pytest

from modelgate.errorlog import MAX_LOGGED_CHARS, MAX_LOGGED_FRAMES, log_refused, log_unexpected

log = logging.getLogger("modelgate.test")


def _deep(n: int) -> None:
    if n:
        _deep(n - 1)
    raise ValueError("x" * 100_000)


def test_an_unexpected_error_is_one_record_with_its_last_frames(
    caplog: pytest.LogCaptureFixture,
) -> None:
    try:
        _deep(900)
    except ValueError as exc:
        log_unexpected(log, "/v2/models/" + "m" * 10_000 + "/infer", exc)
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.exc_info is None  # the handler would format the whole traceback
    text = record.getMessage()
    assert 1 < text.count("File ") <= MAX_LOGGED_FRAMES  # the innermost, repeats folded
    assert 'raise ValueError("x" * 100_000)' in text
    assert "ValueError: xxx" in text
    assert len(text) < 3 * MAX_LOGGED_CHARS + 200 * MAX_LOGGED_FRAMES


def test_a_refusal_is_one_short_debug_line(caplog: pytest.LogCaptureFixture) -> None:
    log_refused(log, "/v1/models/m:predict", 400, "bad " * 10_000)
    assert not caplog.records  # not at INFO: refusals are the client's to read
    caplog.set_level(logging.DEBUG, logger="modelgate")
    log_refused(log, "/v1/models/m:predict", 400, "bad\n" * 10_000)
    (record,) = caplog.records
    assert record.levelno == logging.DEBUG
    assert len(record.getMessage()) < 2 * MAX_LOGGED_CHARS + 100
    assert "(40000 characters)" in record.getMessage()
