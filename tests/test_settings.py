"""Settings: defaults, MODELGATE_* variables and explicit overrides map onto one object."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from modelgate.gateway.cli import build_parser
from modelgate.gateway.settings import (
    SETTING_NAMES,
    SETTINGS,
    BatchSettings,
    SettingsError,
    build_settings,
    load_config_file,
)

README = Path(__file__).resolve().parent.parent / "README.md"


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
    with pytest.raises(SettingsError, match=r"http_prot, models\.m\.max_batch"):
        load_config_file(path)


def _config(tmp_path: Path, text: str) -> tuple[dict[str, object], Path]:
    path = tmp_path / "modelgate.toml"
    path.write_text(text)
    return load_config_file(path), path


@pytest.mark.parametrize(
    ("text", "setting", "problem"),
    [
        ('http_port = "x"', "http_port", 'expected an integer, got "x"'),
        ('max_batch_size = "big"', "max_batch_size", 'expected an integer, got "big"'),
        ('monitoring = "maybe"', "monitoring", 'expected true or false, got "maybe"'),
        ("store = 3", "store", "expected a path, got 3"),
        ("poll_interval = true", "poll_interval", "expected a number, got true"),
        ("[models.m]\nmax_queue = 8", "max_queue", "must be at least max_batch_size (64), got 8"),
        ("[models.m]\nwarmup_runs = -1", "warmup_runs", "must be at least 0, got -1"),
    ],
)
def test_a_wrong_value_in_the_config_file_is_named(
    tmp_path: Path, text: str, setting: str, problem: str
) -> None:
    config, path = _config(tmp_path, text)
    with pytest.raises(SettingsError) as caught:
        build_settings({}, environ={}, config=config, config_path=path)
    table = " ([models.m])" if text.startswith("[models.m]") else ""
    assert str(caught.value) == f"setting {setting} from the config file {path}{table}: {problem}"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MODELGATE_MAX_BATCH_SIZE", "abc", "expected an integer, got 'abc'"),
        ("MODELGATE_MONITORING", "maybe", "expected on or off, got 'maybe'"),
        ("MODELGATE_POLL_INTERVAL", "nan", "expected a number, got 'nan'"),
        ("MODELGATE_HTTP_PORT", "70000", "must be at most 65535, got 70000"),
        ("MODELGATE_GRPC_WORKERS", "many", "expected one of shared, thread; got 'many'"),
        ("MODELGATE_PSI_THRESHOLD", "-1", "must be at least 0, got -1.0"),
    ],
)
def test_a_wrong_variable_is_named(variable: str, value: str, message: str) -> None:
    setting = variable.removeprefix("MODELGATE_").lower()
    with pytest.raises(SettingsError) as caught:
        build_settings({}, environ={variable: value})
    assert str(caught.value) == f"setting {setting} from the variable {variable}: {message}"


def test_variables_and_flags_take_on_and_off() -> None:
    env = {"MODELGATE_MONITORING": "off", "MODELGATE_GUARD_ENABLED": "on"}
    s = build_settings({"outputs_count": "yes"}, environ=env)
    assert (s.models.monitor.monitoring, s.models.guard.guard_enabled) == (False, True)
    assert s.models.drift.outputs_count is True


def test_a_wrong_flag_is_named() -> None:
    """Flags arrive as text and are parsed like variables; a range check names them too."""
    with pytest.raises(SettingsError) as caught:
        build_settings({"max_batch_size": "0"}, environ={"MODELGATE_MAX_BATCH_SIZE": "8"})
    assert str(caught.value) == (
        "setting max_batch_size from the flag --max-batch-size: must be at least 1, got 0"
    )
    with pytest.raises(SettingsError, match=r"^setting window_rows from the flag --window-rows: "):
        build_settings({"window_rows": "many"}, environ={})
    # A rule between two settings names the one left at its default.
    with pytest.raises(SettingsError) as caught:
        build_settings({"max_batch_size": "5000"}, environ={})
    assert str(caught.value) == (
        "setting max_queue (default): must be at least max_batch_size (5000), got 4096"
    )


def test_every_setting_but_the_secret_is_a_flag() -> None:
    parser = build_parser()
    dests = set(vars(parser.parse_args(["serve"]))) - {"handler", "command", "config"}
    assert dests == set(SETTING_NAMES) - {"webhook_secret"}
    for name in dests:
        args = parser.parse_args(["serve", f"--{name.replace('_', '-')}", "1"])
        assert getattr(args, name) == "1"
    assert SETTINGS["webhook_secret"].flag is None


def _readme_settings() -> list[str]:
    """The names in the first column of the README's table under "## Configuration"."""
    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])]


def test_the_readme_lists_every_setting_once() -> None:
    names = _readme_settings()
    assert sorted(names) == sorted(SETTING_NAMES)
    assert len(names) == len(set(names))
