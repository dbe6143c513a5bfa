"""`modelgate registry`: real subprocesses for the main paths, `main([...])` for the rest."""

from __future__ import annotations

import getpass
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import modelzoo
from modelgate.gateway.cli import main
from modelgate.registry import cli as registry_cli
from modelgate.registry.store import RegistryStore
from modelgate.registry.types import ModelVersion, Stage
from modelgate.tls import TlsFiles


def _subprocess(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelgate", "registry", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _table(text: str) -> list[list[str]]:
    """Rows of a table's cells (after the header), split on whitespace."""
    return [line.split() for line in text.strip().splitlines()[1:]]


@pytest.fixture
def onnx_file(tmp_path: Path, model_files: dict[str, bytes]) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(model_files["classifier"])
    return path


@pytest.fixture
def store_dir(tmp_path: Path, onnx_file: Path) -> str:
    """A store with versions 1-3 of `clf` in stage none."""
    store = str(tmp_path / "store")
    for _ in range(3):
        assert main(["registry", "--store", store, "register", "clf", str(onnx_file)]) == 0
    return store


def _run(capsys: pytest.CaptureFixture[str], store: str, *args: str) -> tuple[int, str, str]:
    code = main(["registry", "--store", store, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_register_with_a_reference_sample_then_show_it(
    tmp_path: Path, onnx_file: Path, rng: np.random.Generator
) -> None:
    store = str(tmp_path / "store")
    sample = rng.normal(size=(300, 8))
    header = ",".join(f"f{j}" for j in range(8))
    np.savetxt(tmp_path / "ref.csv", sample, delimiter=",", header=header, comments="")
    registered = _subprocess(
        "--store", store, "register", "clf", str(onnx_file), "--stage", "canary",
        "--traffic", "10", "--reference", str(tmp_path / "ref.csv"), "--description",
        "fraud model", "--tag", "team=risk", "--tag", "data=2026-11", "--actor", "ci",
    )  # fmt: skip
    assert registered.returncode == 0, registered.stderr
    assert registered.stdout.split()[:3] == ["clf", "1", "canary"]

    shown = _subprocess("--store", store, "show", "clf", "1")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "stage:        canary (10%)" in lines
    assert "description:  fraud model" in lines
    assert "tags:         data=2026-11, team=risk" in lines
    assert "reference:    300 rows, 8 input features, 4 output columns" in lines
    assert (
        "  thresholds:  calibrated for windows of 5000 rows at 0.0001 false alarms per "
        "feature and window"
    ) in lines
    assert registered.stderr == ""  # 300 rows are enough to see a 0.5-sd shift
    assert any(line.split()[:3] == ["f3", "numeric", "0.0%"] for line in lines)
    assert any(line.split()[:2] == ["label", "categorical"] for line in lines)

    as_json = _subprocess("--store", store, "show", "clf", "1", "--json")
    version = ModelVersion.from_json(json.loads(as_json.stdout))
    assert (version.stage, version.traffic, version.tags["team"]) == (Stage.CANARY, 10.0, "risk")
    assert version.reference is not None
    assert [f["name"] for f in version.reference["inputs"]] == [f"f{j}" for j in range(8)]
    calibration = version.reference["calibration"]
    assert len(calibration["thresholds"]) == 8 + 4
    assert set(calibration["thresholds"][0]) == {"psi", "js", "ks", "wasserstein"}
    assert version == RegistryStore(store).get("clf", 1)


def test_a_reference_too_small_for_the_windows_is_registered_with_a_warning(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, onnx_file: Path, rng: np.random.Generator
) -> None:
    np.save(tmp_path / "ref.npy", rng.normal(size=(20, 8)))
    store = str(tmp_path / "store")
    code, out, err = _run(
        capsys, store, "register", "clf", str(onnx_file), "--reference", str(tmp_path / "ref.npy")
    )
    assert code == 0 and out.split()[:2] == ["clf", "1"]
    assert err.startswith("warning: the reference has 20 rows: against windows of 5000 rows")
    assert len(err.splitlines()) == 1
    least = int(err.split("; ")[-1].split()[0])
    assert least > 20
    assert f"smallest useful reference: {least} rows" in _run(capsys, store, "show", "clf", "1")[1]


def test_transition_errors_exit_2_with_a_message(tmp_path: Path, store_dir: str) -> None:
    over = _subprocess("--store", store_dir, "transition", "clf", "1", "canary", "--traffic", "150")
    assert over.returncode == 2
    assert over.stderr == "error: traffic must be between 0 and 100 percent, got 150\n"
    assert over.stdout == ""
    ghost = _subprocess("--store", store_dir, "transition", "clf", "9", "staging")
    assert (ghost.returncode, ghost.stderr) == (2, "error: no version 9 of model 'clf'\n")
    assert RegistryStore(store_dir).history() == []


@pytest.mark.parametrize("version", ["99999999999999999999", "9223372036854775808", "0", "x"])
def test_a_version_no_registry_can_hold_is_one_line_and_exit_2(
    store_dir: str, version: str
) -> None:
    for command in (["transition", "clf", version, "staging"], ["show", "clf", version]):
        done = _subprocess("--store", store_dir, *command)
        assert done.returncode == 2, done.stderr
        assert done.stderr == (
            f"error: a version is a whole number from 1 to {2**63 - 1}, not {version!r}\n"
        )
    assert RegistryStore(store_dir).history() == []


def test_a_rollout_in_list_and_history(capsys: pytest.CaptureFixture[str], store_dir: str) -> None:
    steps = [
        ["transition", "clf", "1", "production", "--actor", "alice"],
        ["transition", "clf", "2", "canary", "--traffic", "10", "--reason", "try v2"],
        ["transition", "clf", "3", "shadow"],
        ["transition", "clf", "2", "canary", "--traffic", "25.5"],
        ["transition", "clf", "2", "production", "--keep", "--reason", "v2 is better"],
    ]
    for step in steps:
        code, out, err = _run(capsys, store_dir, *step)
        assert (code, err) == (0, "")
    # transition prints the model's versions afterwards, like list.
    assert out.splitlines()[0].split() == ["MODEL", "VERSION", "STAGE", "SHA256", "TRAFFIC", "SIZE"]
    assert [row[:3] for row in _table(out)] == [
        ["clf", "1", "staging"],
        ["clf", "2", "production"],
        ["clf", "3", "shadow"],
    ]
    code, listing, _ = _run(capsys, store_dir, "list")
    assert listing == out
    assert [(row[2], row[4]) for row in _table(listing)] == [
        ("staging", "-"),
        ("production", "-"),
        ("shadow", "100"),
    ]

    code, history, _ = _run(capsys, store_dir, "history", "clf")
    assert code == 0
    assert history.splitlines()[0].split() == [
        "TIME", "MODEL", "VERSION", "FROM", "TO", "TRAFFIC", "ACTOR", "REASON",
    ]  # fmt: skip
    me = getpass.getuser()
    assert [row[1:] for row in _table(history)] == [
        ["clf", "1", "none", "production", "-", "alice", "-"],
        ["clf", "2", "none", "canary", "10", me, "try", "v2"],
        ["clf", "3", "none", "shadow", "100", me, "-"],
        ["clf", "2", "canary", "canary", "25.5", me, "-"],
        ["clf", "1", "production", "staging", "-", me, "replaced", "by", "version", "2:", "v2",
         "is", "better"],
        ["clf", "2", "canary", "production", "-", me, "v2", "is", "better"],
    ]  # fmt: skip
    assert all(row[0].endswith("Z") and len(row[0]) == 20 for row in _table(history))


def test_a_signature_change_is_refused_unless_allowed_with_a_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, store_dir: str
) -> None:
    (tmp_path / "echo.onnx").write_bytes(modelzoo.echo("FP32", width=modelzoo.FEATURES))
    assert _run(capsys, store_dir, "transition", "clf", "1", "production")[0] == 0
    assert _run(capsys, store_dir, "register", "clf", str(tmp_path / "echo.onnx"))[0] == 0
    refused = _subprocess("--store", store_dir, "transition", "clf", "4", "canary", "--traffic",
                          "10")  # fmt: skip
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr.startswith(
        "error: the signature of version 4 of 'clf' differs from production version 1's "
        "(production != version 4): input 'input' is missing (version 4 has 'x'); "
    )
    assert refused.stderr.count("\n") == 1 and "--allow-signature-change" in refused.stderr
    code, out, err = _run(capsys, store_dir, "transition", "clf", "4", "canary", "--traffic",
                          "10", "--allow-signature-change")  # fmt: skip
    assert (code, out) == (2, "")
    assert (
        err == "error: allowing a signature change needs a reason for the audit trail (--reason)\n"
    )
    allowed = _subprocess("--store", store_dir, "transition", "clf", "4", "canary", "--traffic",
                          "10", "--allow-signature-change", "--reason", "x clients")  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    code, history, _ = _run(capsys, store_dir, "history", "clf")
    header, *_, last = history.splitlines()
    assert last[header.index("REASON") :] == (
        "signature change allowed (input 'input' is missing (version 4 has 'x'); output 'label' "
        "is missing (version 4 has 'y'); output 'probabilities' is missing (version 4 has 'y')): "
        "x clients"
    )
    code, out, err = _run(
        capsys, store_dir, "register", "clf", str(tmp_path / "echo.onnx"), "--stage", "shadow",
        "--allow-signature-change", "--reason", "mirror",
    )  # fmt: skip
    assert code == 0, err
    assert RegistryStore(store_dir).get("clf", 5).tags == {"modelgate.signature_change": "mirror"}


def test_canary_shares_over_100_are_a_conflict(
    capsys: pytest.CaptureFixture[str], store_dir: str
) -> None:
    assert _run(capsys, store_dir, "transition", "clf", "1", "canary", "--traffic", "70")[0] == 0
    code, out, err = _run(capsys, store_dir, "transition", "clf", "2", "canary", "--traffic", "40")
    assert (code, out) == (2, "")
    assert err.startswith("error: canary shares of 'clf' would add up to 110%")
    code, out, err = _run(capsys, store_dir, "transition", "clf", "2", "canary")
    assert (code, err) == (2, "error: a canary needs a traffic share (percent of live traffic)\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["register", "m", "{tmp}/nope.onnx"], "error: model file {tmp}/nope.onnx does not exist"),
        (["register", "m", "{onnx}", "--tag", "team"], "error: --tag takes key=value, got 'team'"),
        (["register", "m", "{onnx}", "--tag", "=x"], "error: --tag takes key=value, got '=x'"),
        (["register", "m", "{onnx}", "--reference", "{tmp}/r.npy"], "error: {tmp}/r.npy: no such"),
        (["register", "m", "{onnx}", "--reference", "{tmp}/narrow.npy"], "error: the reference "
         "data has 3 columns but the model takes 8 (input: 8)"),
        (["register", "m", "{onnx}", "--stage", "live"], "error: unknown stage 'live'"),
        (["register", "m", "{onnx}", "--traffic", "5"], "error: a traffic share is only for"),
        (["register", "m/x", "{onnx}"], "error: invalid model name 'm/x'"),
        (["list", "ghost"], "error: unknown model 'ghost'"),
        (["history", "ghost"], "error: unknown model 'ghost'"),
        (["show", "ghost", "1"], "error: unknown model 'ghost'"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_and_registers_nothing(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    onnx_file: Path,
    args: list[str],
    message: str,
) -> None:
    np.save(tmp_path / "narrow.npy", np.zeros((5, 3)))
    store = str(RegistryStore(tmp_path / "store", create=True).root)
    filled = [a.format(tmp=tmp_path, onnx=onnx_file) for a in args]
    code, out, err = _run(capsys, store, *filled)
    assert (code, out) == (2, "")
    assert err.startswith(message.format(tmp=tmp_path)), err
    assert RegistryStore(store).list_versions() == []


def test_serve_hands_the_store_to_the_registry_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    calls: list[tuple[Any, ...]] = []
    fake = types.ModuleType("modelgate.registry.server")
    fake.run = lambda store, **options: calls.append((store, options))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "modelgate.registry.server", fake)
    monkeypatch.setattr("modelgate.registry.server", fake, raising=False)
    tokens = tmp_path / "tokens"
    store = tmp_path / "store"
    # No store there: an error, unless asked to start one.
    assert main(["registry", "--store", str(store), "serve", "--port", "8081"]) == 2
    assert capsys.readouterr().err == (
        f"error: no registry at {store} (create one with `modelgate registry --store {store} "
        "register NAME FILE` or pass the right --store, or pass --create-store)\n"
    )
    assert not store.exists()
    assert main(["registry", "--store", str(store), "serve", "--port", "8081",
                 "--create-store"]) == 0  # fmt: skip
    assert main([
        "registry", "--store", str(store), "serve", "--host", "0.0.0.0", "--port", "0",
        "--token-file", str(tokens), "--protect-reads", "--tls-cert-file", "c.pem",
        "--tls-key-file", "k.pem",
    ]) == 0  # fmt: skip
    # The variables `modelgate serve` reads, with flags winning over them.
    monkeypatch.setenv("MODELGATE_HOST", "127.0.0.2")
    monkeypatch.setenv("MODELGATE_STORE", str(store))
    assert main(["registry", "serve", "--port", "1"]) == 0
    assert main(["registry", "serve", "--port", "2", "--host", "127.0.0.3"]) == 0
    plain = {"token_file": None, "protect_reads": False, "tls": None, "upload_ttl": 3600.0}
    tls = TlsFiles(Path("c.pem"), Path("k.pem"), None, "--tls-cert-file", "--tls-key-file", "")
    assert calls == [
        (store, {"host": "127.0.0.1", "port": 8081, **plain}),
        (store, {"host": "0.0.0.0", "port": 0, "token_file": tokens, "protect_reads": True,
                 "tls": tls, "upload_ttl": 3600.0}),
        (store, {"host": "127.0.0.2", "port": 1, **plain}),
        (store, {"host": "127.0.0.3", "port": 2, **plain}),
    ]  # fmt: skip


def test_a_remote_registry_gets_the_token_from_the_file_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    store_dir: str,
) -> None:
    opened: list[tuple[str, str | None]] = []

    def open_registry(location: str, *, token: str | None = None) -> RegistryStore:
        opened.append((location, token))
        return RegistryStore(store_dir)

    monkeypatch.setattr(registry_cli, "open_registry", open_registry)
    url = "http://registry.test:8081"
    capsys.readouterr()  # the fixture's registrations
    monkeypatch.setenv("MODELGATE_REGISTRY_TOKEN", "from-env")
    assert main(["registry", "--registry", url, "list"]) == 0
    (tmp_path / "token").write_text("from-file\n")
    (tmp_path / "env-token").write_text("from-env-file\n")
    assert (
        main(["registry", "--registry", url, "--token-file", str(tmp_path / "token"), "list"]) == 0
    )
    # The variables `modelgate serve` reads: where the registry is and its token file.
    monkeypatch.setenv("MODELGATE_REGISTRY", url)
    monkeypatch.setenv("MODELGATE_REGISTRY_TOKEN_FILE", str(tmp_path / "env-token"))
    assert main(["registry", "list"]) == 0
    assert opened == [(url, "from-env"), (url, "from-file"), (url, "from-env-file")]
    listings = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in listings if line.startswith("clf")] == 3 * [
        ["clf", "1", "none"],
        ["clf", "2", "none"],
        ["clf", "3", "none"],
    ]
    code = main(["registry", "--registry", url, "serve", "--port", "1"])
    assert (code, capsys.readouterr().err) == (
        2,
        f"error: serve needs a store directory, not {url} (from --registry)\n",
    )
    code = main(["registry", "serve", "--port", "1"])
    assert (code, capsys.readouterr().err) == (
        2,
        f"error: serve needs a store directory, not {url} (from MODELGATE_REGISTRY)\n",
    )
    code = main(["registry", "--store", store_dir, "--token-file", str(tmp_path / "token"), "list"])
    assert (code, capsys.readouterr().err) == (
        2,
        f"error: --token-file is for a registry server or MLflow, not for the store {store_dir}\n",
    )


def _modelgate(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`modelgate ARGS` in `cwd` with no MODELGATE_* variables but those of `env`."""
    from loadtest.procs import clean_environment

    return subprocess.run(
        [sys.executable, "-m", "modelgate", *args], capture_output=True, text=True,
        timeout=120, cwd=cwd, env={**clean_environment(), **(env or {})},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("flag", "location", "hint"),
    [
        ("--registry", "mlflow://host:5055", " (for MLflow: mlflow+http://host:port)"),
        ("--registry", "ftp://x", ""),
        ("--registry", "s3://bucket/models", ""),
    ],
)
def test_an_unknown_scheme_is_an_error_and_creates_nothing(
    tmp_path: Path, flag: str, location: str, hint: str
) -> None:
    """Not a directory called `mlflow:` that serves nothing and is ready."""
    expected = (
        f"unknown registry location '{location}'{hint}; use a store directory, "
        "file:///path/to/store, http(s)://host:port (a `modelgate registry serve`) or "
        "mlflow+http(s)://host:port (an MLflow tracking server)\n"
    )
    for command in (["registry", flag, location, "list"], ["registry", flag, location, "history"]):
        done = _modelgate(*command, cwd=tmp_path)
        assert (done.returncode, done.stdout, done.stderr) == (2, "", "error: " + expected)
    served = _modelgate(
        "serve", flag, location, "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
        cwd=tmp_path,
    )  # fmt: skip
    assert (served.returncode, served.stderr) == (2, "modelgate: " + expected)
    assert list(tmp_path.iterdir()) == []  # no directory called `mlflow:` or `ftp:`


def test_reading_commands_never_create_a_store(tmp_path: Path, onnx_file: Path) -> None:
    typo = tmp_path / "typo"
    reads = (["list"], ["history"], ["show", "clf", "1"], ["transition", "clf", "1", "none"])
    for command in reads:
        done = _modelgate("registry", "--store", str(typo), *command, cwd=tmp_path)
        assert (done.returncode, done.stdout) == (2, "")
        assert done.stderr == (
            f"error: no registry at {typo} (create one with `modelgate registry --store {typo} "
            "register NAME FILE` or pass the right --store)\n"
        )
    # Without flags, the default ./modelstore is not created either.
    done = _modelgate("registry", "list", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (
        2,
        "error: no registry at modelstore (create one with `modelgate registry --store "
        "modelstore register NAME FILE` or pass the right --store)\n",
    )
    # A directory that holds no registry is not one.
    (tmp_path / "empty").mkdir()
    done = _modelgate("registry", "--store", str(tmp_path / "empty"), "list", cwd=tmp_path)
    assert done.stderr.startswith(f"error: no registry at {tmp_path / 'empty'} (the directory "
                                  "has no registry.db) (create one with")  # fmt: skip
    # A register that fails on its own input leaves no store behind; one that works makes it.
    done = _modelgate(
        "registry", "--store", str(typo), "register", "clf", "nope.onnx", cwd=tmp_path
    )
    assert (done.returncode, done.stderr) == (2, "error: model file nope.onnx does not exist\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "model.onnx"]
    done = _modelgate(
        "registry", "--store", str(typo), "register", "clf", str(onnx_file), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert (
        _modelgate("registry", "--store", str(typo), "show", "clf", "1", cwd=tmp_path).returncode
        == 0
    )


def test_registry_commands_read_the_variables_serve_reads(tmp_path: Path, onnx_file: Path) -> None:
    """As in the container (MODELGATE_STORE=/models): `modelgate registry list` reads that
    store; `registry serve` binds MODELGATE_HOST; a client finds it with MODELGATE_REGISTRY
    and authenticates with MODELGATE_REGISTRY_TOKEN_FILE."""
    from loadtest.procs import ServerProcess

    store = tmp_path / "models"
    done = _modelgate("registry", "register", "clf", str(onnx_file), "--stage", "production",
                      cwd=tmp_path, env={"MODELGATE_STORE": str(store)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    listed = _modelgate("registry", "list", cwd=tmp_path, env={"MODELGATE_STORE": str(store)})
    assert [row[:3] for row in _table(listed.stdout)] == [["clf", "1", "production"]]
    assert not (tmp_path / "modelstore").exists()

    (tmp_path / "tokens").write_text("ci:s3cret\n")
    (tmp_path / "secret").write_text("s3cret\n")
    argv = [sys.executable, "-m", "modelgate", "registry", "serve", "--port", "0",
            "--token-file", str(tmp_path / "tokens")]  # fmt: skip
    server = ServerProcess(
        argv, tmp_path / "registry.log",
        env={"MODELGATE_STORE": str(store), "MODELGATE_HOST": "127.0.0.2"},
    )  # fmt: skip
    try:
        url = server.wait_for_line(r"listening on (http://\S+)", timeout=60).group(1)
        assert url.startswith("http://127.0.0.2:")
        client = {"MODELGATE_REGISTRY": url, "MODELGATE_STORE": str(tmp_path / "elsewhere")}
        refused = _modelgate("registry", "register", "clf", str(onnx_file), cwd=tmp_path,
                             env=client)  # fmt: skip
        assert refused.returncode == 2  # no token: the registry wins over the store
        client["MODELGATE_REGISTRY_TOKEN_FILE"] = str(tmp_path / "secret")
        done = _modelgate("registry", "register", "clf", str(onnx_file), cwd=tmp_path, env=client)
        assert done.returncode == 0, done.stderr
        listed = _modelgate("registry", "list", cwd=tmp_path, env=client)
        assert [row[:3] for row in _table(listed.stdout)] == [
            ["clf", "1", "production"],
            ["clf", "2", "none"],
        ]
    finally:
        assert server.stop() == 0
    assert not (tmp_path / "elsewhere").exists()


def test_list_and_history_columns_line_up_whatever_the_widths(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, onnx_file: Path
) -> None:
    store = str(tmp_path / "store")
    long_name = "fraud-detection-for-card-payments-eu"
    for name in ("a", long_name):
        assert main(["registry", "--store", store, "register", name, str(onnx_file)]) == 0
    assert main(["registry", "--store", store, "transition", "a", "1", "canary", "--traffic",
                 "12.5", "--actor", "someone-with-a-very-long-login-name"]) == 0  # fmt: skip
    assert main(["registry", "--store", store, "transition", long_name, "1", "production"]) == 0
    capsys.readouterr()
    for command in ("list", "history"):
        assert main(["registry", "--store", store, command]) == 0
        lines = capsys.readouterr().out.splitlines()
        titles = lines[0].split()
        starts = [lines[0].index(title) for title in titles]
        assert len(lines) > 2
        for line in lines[1:]:
            # Each cell starts where its column's title does; numbers end where it ends.
            for title, start, cell in zip(titles, starts, line.split(), strict=False):
                if title in ("VERSION", "TRAFFIC", "SIZE"):
                    end = start + len(title)
                    assert line[end - len(cell) : end] == cell, (title, line)
                else:
                    assert line[start : start + len(cell)] == cell, (title, line)
