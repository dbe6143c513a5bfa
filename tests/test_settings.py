"""Settings: defaults, MODELGATE_* variables and explicit overrides map onto one object."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import SETTING_NAMES, build_settings


def test_defaults() -> None:
    s = build_settings({}, environ={})
    assert (s.host, s.http_port, s.grpc_port, s.metrics_port) == ("127.0.0.1", 8000, 8001, 8002)
    assert s.max_body_bytes == 64 * 1024 * 1024
    assert s.models.batch.max_batch_size == 64


def test_environment_then_flags() -> None:
    env = {"MODELGATE_HTTP_PORT": "9000", "MODELGATE_MAX_BATCH_SIZE": "8", "MODELGATE_STORE": "/x"}
    s = build_settings({"http_port": None, "max_delay_us": 500}, environ=env)
    assert s.http_port == 9000
    assert s.store == Path("/x")
    assert s.models.batch.max_batch_size == 8
    assert s.models.batch.max_delay_us == 500
    assert build_settings({"http_port": 1}, environ=env).http_port == 1


def test_every_setting_has_one_name() -> None:
    assert len(SETTING_NAMES) == len(set(SETTING_NAMES))
    assert {"http_port", "max_batch_size", "intra_op_threads"} <= set(SETTING_NAMES)


def test_invalid_values_are_refused() -> None:
    with pytest.raises(ValueError):
        build_settings({"max_batch_size": 0}, environ={})
    with pytest.raises(ValueError):
        build_settings({"graph_optimization": "turbo"}, environ={})
