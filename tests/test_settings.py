"""Settings: defaults, MODELGATE_* variables and explicit overrides map onto one object."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelgate.gateway.settings import (
    SETTING_NAMES,
    BatchSettings,
    build_settings,
    load_config_file,
)


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


def test_config_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "modelgate.toml"
    path.write_text(
        'store = "/models"\nhttp_port = 7000\nmax_batch_size = 16\n'
        "[models.heavy]\nmax_batch_size = 128\nmax_delay_us = 2000\nintra_op_threads = 2\n"
    )
    config = load_config_file(path)
    s = build_settings({"max_queue": 8192}, environ={"MODELGATE_HTTP_PORT": "7001"}, config=config)
    assert s.store == Path("/models")
    assert s.http_port == 7001
    assert s.models.batch == BatchSettings(max_batch_size=16, max_queue=8192)
    heavy = s.for_model("heavy")
    assert heavy.batch == BatchSettings(max_batch_size=128, max_delay_us=2000, max_queue=8192)
    assert heavy.runtime.intra_op_threads == 2
    assert s.for_model("light") is s.models


def test_config_file_mistakes_are_named(tmp_path: Path) -> None:
    path = tmp_path / "modelgate.toml"
    path.write_text("http_prot = 1\n[models.m]\nmax_batch = 2\n")
    with pytest.raises(ValueError, match=r"http_prot, models\.m\.max_batch"):
        load_config_file(path)
