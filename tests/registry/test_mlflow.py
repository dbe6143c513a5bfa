"""The MLflow backend against a real `mlflow server` (sqlite, artifact proxy, 127.0.0.1).

One server runs for the whole session; each test registers models under its own names, so
the tests do not depend on each other. Models are registered the ways MLflow users do it:
a run artifact plus `create_model_version`, and `mlflow.onnx.log_model`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelgate.registry.client import open_registry
from modelgate.registry.errors import (
    ArtifactIntegrityError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    RegistryError,
    SignatureMismatchError,
    UnavailableError,
)
from modelgate.registry.mlflow import MlflowRegistry
from modelgate.registry.types import Stage

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra: pip install -e '.[test,mlflow]'")
from mlflow import MlflowClient  # noqa: E402

from loadtest.procs import ServerProcess  # noqa: E402

STARTUP_SECONDS = 90.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server with the artifact proxy; stopped after the session."""
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = root / "server.log"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--serve-artifacts", "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            command, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        # The server's own workers share its session: stop them all, then make sure.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture(scope="session")
def client(mlflow_url: str) -> MlflowClient:
    mlflow.set_tracking_uri(mlflow_url)
    return MlflowClient(tracking_uri=mlflow_url)


@pytest.fixture
def registry(mlflow_url: str) -> Iterator[MlflowRegistry]:
    with MlflowRegistry(mlflow_url) as reg:
        yield reg


@pytest.fixture
def name() -> str:
    """A model name of this test's own."""
    return f"m-{uuid.uuid4().hex[:10]}"


def publish(
    client: MlflowClient, tmp_path: Path, name: str, files: dict[str, bytes]
) -> tuple[str, str]:
    """Log `files` as one run's artifacts under `model/` and register them as a new version
    of `name` the way MLflow's docs show it: `create_model_version(source=<run artifact uri>)`.
    Returns (version, run id)."""
    run = client.create_run(experiment_id="0")
    folder = tmp_path / uuid.uuid4().hex / "model"
    folder.mkdir(parents=True)
    for file_name, data in files.items():
        (folder / file_name).write_bytes(data)
    client.log_artifacts(run.info.run_id, str(folder), artifact_path="model")
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name)
    source = f"{run.info.artifact_uri}/model"
    version = client.create_model_version(name, source, run_id=run.info.run_id)
    return str(version.version), run.info.run_id


def legacy_stage(client: MlflowClient, name: str, version: str, stage: str) -> None:
    with pytest.warns(FutureWarning):  # stages are deprecated in MLflow 3, still served
        client.transition_model_version_stage(name, version, stage)


def stages(registry: MlflowRegistry, name: str) -> dict[int, tuple[Stage, float | None]]:
    return {mv.version: (mv.stage, mv.traffic) for mv in registry.list_versions(name)}


def test_aliases_and_legacy_stages_map_to_stages(
    client: MlflowClient,
    registry: MlflowRegistry,
    name: str,
    tmp_path: Path,
    model_files: dict[str, bytes],
) -> None:
    files = {"model.onnx": model_files["classifier"]}
    for _ in range(7):
        publish(client, tmp_path, name, files)
    client.set_registered_model_alias(name, "champion", "1")
    legacy_stage(client, name, "2", "Production")  # an alias names production: not served
    client.set_registered_model_alias(name, "challenger", "3")
    client.set_model_version_tag(name, "3", "modelgate.traffic", "25")
    legacy_stage(client, name, "4", "Staging")  # a canary without a share: 0%
    client.set_registered_model_alias(name, "shadow", "5")
    legacy_stage(client, name, "6", "Archived")
    client.set_registered_model_alias(name, "unrelated", "7")
    assert stages(registry, name) == {
        1: (Stage.PRODUCTION, None),
        2: (Stage.NONE, None),
        3: (Stage.CANARY, 25.0),
        4: (Stage.CANARY, 0.0),
        5: (Stage.SHADOW, 100.0),
        6: (Stage.ARCHIVED, None),
        7: (Stage.NONE, None),
    }
    got = registry.get(name, 3)
    assert got.tags["modelgate.traffic"] == "25"
    assert (got.sha256, got.size, got.inputs) == ("", 0, ())
    assert got.created == pytest.approx(time.time(), abs=600)

    # `production` beats `champion`; one version holding several aliases takes the strongest.
    client.set_registered_model_alias(name, "production", "5")
    client.set_registered_model_alias(name, "canary", "5")
    assert stages(registry, name)[1] == (Stage.NONE, None)
    assert stages(registry, name)[5] == (Stage.PRODUCTION, None)


def test_without_aliases_the_highest_legacy_production_version_wins(
    client: MlflowClient,
    registry: MlflowRegistry,
    name: str,
    tmp_path: Path,
    model_files: dict[str, bytes],
) -> None:
    for _ in range(3):
        publish(client, tmp_path, name, {"model.onnx": model_files["lookup"]})
    legacy_stage(client, name, "1", "Production")
    legacy_stage(client, name, "2", "Production")
    client.set_model_version_tag(name, "3", "modelgate.traffic", "lots")
    legacy_stage(client, name, "3", "Staging")
    assert stages(registry, name) == {
        1: (Stage.NONE, None),
        2: (Stage.PRODUCTION, None),
        3: (Stage.CANARY, 0.0),  # not a number: nothing is guessed
    }


def test_generation_changes_when_an_alias_or_tag_moves_and_not_otherwise(
    client: MlflowClient,
    registry: MlflowRegistry,
    name: str,
    tmp_path: Path,
    model_files: dict[str, bytes],
) -> None:
    for _ in range(2):
        publish(client, tmp_path, name, {"model.onnx": model_files["classifier"]})
    client.set_registered_model_alias(name, "production", "1")
    first = registry.generation()
    assert registry.generation() == first
    with MlflowRegistry(registry.base_url) as another:
        assert another.generation() == first  # nothing per client in it

    client.set_registered_model_alias(name, "production", "2")
    moved = registry.generation()
    assert moved != first
    client.set_model_version_tag(name, "1", "modelgate.traffic", "5")
    tagged = registry.generation()
    assert tagged not in (first, moved)
    publish(client, tmp_path, name, {"model.onnx": model_files["classifier"]})
    assert registry.generation() != tagged


def test_pages_are_followed(
    client: MlflowClient, mlflow_url: str, tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    names = [f"paged-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    for model in names:
        for _ in range(2):
            publish(client, tmp_path, model, {"model.onnx": model_files["lookup"]})
        client.set_registered_model_alias(model, "production", "2")
    with MlflowRegistry(mlflow_url, page_size=1) as paged, MlflowRegistry(mlflow_url) as whole:
        assert paged.list_versions() == whole.list_versions()
        assert paged.generation() == whole.generation()
        assert [(v.name, v.version) for v in paged.list_versions(names[1])] == [
            (names[1], 1),
            (names[1], 2),
        ]
        listed = {(v.name, v.version, v.stage) for v in paged.list_versions()}
    assert {(m, 2, Stage.PRODUCTION) for m in names} <= listed


# mlflow.onnx.log_model warns that it cannot validate inputs of an untyped predict function.
@pytest.mark.filterwarnings("ignore:.*type hint is inferred as AnyType:UserWarning:mlflow")
def test_read_artifact_returns_the_exact_bytes_whichever_way_it_was_registered(
    client: MlflowClient,
    registry: MlflowRegistry,
    name: str,
    tmp_path: Path,
    model_files: dict[str, bytes],
) -> None:
    import mlflow.onnx
    import onnx

    classifier, lookup = model_files["classifier"], model_files["lookup"]
    # 1: a run artifact registered by its mlflow-artifacts:/ URI, beside other files
    publish(client, tmp_path, name, {"model.onnx": classifier, "README.txt": b"notes"})
    # 2: mlflow.onnx.log_model, registered by it (source models:/m-...)
    with mlflow.start_run() as run:
        mlflow.onnx.log_model(onnx.load_from_string(lookup), name="net", registered_model_name=name)
    # 3: the same logged model named by the run that logged it (runs:/<run>/net)
    client.create_model_version(name, f"runs:/{run.info.run_id}/net", run_id=run.info.run_id)
    # 4: a plain run artifact named by runs:/
    _, run_id = publish(client, tmp_path, name, {"model.onnx": classifier})
    client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id)

    found = client.search_model_versions(f"name = '{name}'")
    sources = {int(mv.version): mv.source for mv in found}
    assert sources[1].startswith("mlflow-artifacts:/")
    assert sources[2].startswith("models:/")
    assert sources[3].startswith("runs:/") and sources[5].startswith("runs:/")
    expected = {1: classifier, 2: lookup, 3: lookup, 4: classifier, 5: classifier}
    for mv in registry.list_versions(name):
        assert registry.read_artifact(mv) == expected[mv.version], mv.version


def test_the_sha256_tag_is_verified(
    client: MlflowClient,
    registry: MlflowRegistry,
    name: str,
    tmp_path: Path,
    model_files: dict[str, bytes],
) -> None:
    data = model_files["classifier"]
    publish(client, tmp_path, name, {"model.onnx": data})
    publish(client, tmp_path, name, {"model.onnx": data})
    sha = hashlib.sha256(data).hexdigest()
    client.set_model_version_tag(name, "1", "modelgate.sha256", sha.upper())
    client.set_model_version_tag(name, "2", "modelgate.sha256", "0" * 64)
    good, bad = registry.list_versions(name)
    assert good.sha256 == sha
    assert registry.read_artifact(good) == data
    with pytest.raises(ArtifactIntegrityError, match="0000"):
        registry.read_artifact(bad)


def test_an_artifact_needs_exactly_one_loadable_onnx_file(
    client: MlflowClient,
    registry: MlflowRegistry,
    name: str,
    tmp_path: Path,
    model_files: dict[str, bytes],
) -> None:
    publish(client, tmp_path, name, {"weights.bin": b"\0"})
    publish(client, tmp_path, name, {"a.onnx": model_files["lookup"], "b.onnx": b"x"})
    publish(client, tmp_path, name, {"model.onnx": b"not a model"})
    none, several, broken = registry.list_versions(name)
    with pytest.raises(RegistryError, match=r"no \.onnx file"):
        registry.read_artifact(none)
    with pytest.raises(RegistryError, match=r"2 \.onnx files"):
        registry.read_artifact(several)
    with pytest.raises(ArtifactIntegrityError, match="not loadable"):
        registry.read_artifact(broken)


def _cli(mlflow_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelgate", "registry", "--registry", f"mlflow+{mlflow_url}",
         *args], capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_list_and_show_read_sha256_size_and_signature_from_the_artifact(
    client: MlflowClient, mlflow_url: str, name: str, tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    """MLflow records none of them; `registry list` and `show` read them from the file."""
    data = model_files["classifier"]
    publish(client, tmp_path, name, {"model.onnx": data})
    publish(client, tmp_path, name, {"weights.bin": b"\0"})  # no model: nothing to read
    client.set_registered_model_alias(name, "champion", "1")

    listed = _cli(mlflow_url, "list", name)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert [row.split() for row in rows] == [
        [name, "1", "production", hashlib.sha256(data).hexdigest(), "-", str(len(data))],
        [name, "2", "none", "-", "-", "-"],
    ]
    assert header.index("SHA256") == rows[0].index(hashlib.sha256(data).hexdigest())
    note = f"note: {name} v2: the artifact cannot be read: version 2 of {name!r} ("
    assert listed.stderr.startswith(note), listed.stderr
    assert listed.stderr.endswith(") has no .onnx file; modelgate needs exactly one\n")

    shown = _cli(mlflow_url, "show", name, "1")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert f"sha256:       {hashlib.sha256(data).hexdigest()}" in lines
    assert f"size:         {len(data)} bytes" in lines
    inputs, outputs = lines.index("inputs:"), lines.index("outputs:")
    assert [line.split() for line in lines[inputs + 1 : outputs]] == [
        ["input", "FP32", "[-1,", "8]"]
    ]
    assert [line.split()[0] for line in lines[outputs + 1 :] if line.startswith("  ")][:2] == [
        "label",
        "probabilities",
    ]
    as_json = json.loads(_cli(mlflow_url, "show", name, "1", "--json").stdout)
    assert (as_json["sha256"], as_json["size"]) == (hashlib.sha256(data).hexdigest(), len(data))


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()}


def test_transitions_move_aliases_and_record_who_and_why(
    client: MlflowClient,
    registry: MlflowRegistry,
    name: str,
    tmp_path: Path,
    model_files: dict[str, bytes],
) -> None:
    for _ in range(3):
        publish(client, tmp_path, name, {"model.onnx": model_files["classifier"]})
    legacy_stage(client, name, "1", "Production")

    canary = registry.transition(name, 2, Stage.CANARY, traffic=10, actor="ana", reason="try")
    assert (canary.stage, canary.traffic) == (Stage.CANARY, 10.0)
    assert _aliases(client, name) == {"canary": "2"}
    assert client.get_model_version(name, "2").tags["modelgate.traffic"] == "10"

    promoted = registry.transition(name, 2, Stage.PRODUCTION, actor="ana", reason="good")
    assert promoted.stage is Stage.PRODUCTION
    assert _aliases(client, name) == {"production": "2"}
    assert "modelgate.traffic" not in client.get_model_version(name, "2").tags
    assert client.get_model_version(name, "1").current_stage == "Archived"
    assert stages(registry, name) == {
        1: (Stage.ARCHIVED, None),
        2: (Stage.PRODUCTION, None),
        3: (Stage.NONE, None),
    }

    registry.transition(name, 3, Stage.SHADOW)
    assert stages(registry, name)[3] == (Stage.SHADOW, 100.0)
    registry.transition(name, 3, Stage.CANARY, traffic=30)
    assert _aliases(client, name) == {"production": "2", "canary": "3"}
    guard = registry.transition(
        name, 3, Stage.ARCHIVED, actor="modelgate-guard", reason="error rate 12% > 5%"
    )
    assert guard.stage is Stage.ARCHIVED
    assert _aliases(client, name) == {"production": "2"}

    recorded = json.loads(client.get_model_version(name, "3").tags["modelgate.last_transition"])
    assert recorded["actor"] == "modelgate-guard"
    assert recorded["reason"] == "error rate 12% > 5%"
    history = [(t.version, t.from_stage, t.to_stage, t.actor) for t in registry.history(name)]
    assert history == [
        (1, Stage.PRODUCTION, Stage.ARCHIVED, "ana"),
        (2, Stage.CANARY, Stage.PRODUCTION, "ana"),
        (3, Stage.CANARY, Stage.ARCHIVED, "modelgate-guard"),
    ]

    registry.transition(name, 1, Stage.PRODUCTION, keep=True)  # roll back, keep 2 staged
    assert _aliases(client, name) == {"production": "1"}
    assert stages(registry, name)[2] == (Stage.NONE, None)
    assert registry.transition(name, 1, Stage.NONE).stage is Stage.NONE
    assert client.get_model_version(name, "1").current_stage == "None"


def test_a_transition_to_a_version_that_does_not_fit_production_is_refused_unless_allowed(
    client: MlflowClient,
    registry: MlflowRegistry,
    name: str,
    tmp_path: Path,
    model_files: dict[str, bytes],
) -> None:
    publish(client, tmp_path, name, {"model.onnx": model_files["classifier"]})
    publish(client, tmp_path, name, {"model.onnx": model_files["lookup"]})
    client.set_registered_model_alias(name, "production", "1")
    with pytest.raises(SignatureMismatchError, match=r"input 'input' is missing \(version 2 "):
        registry.transition(name, 2, Stage.CANARY, traffic=10)
    assert _aliases(client, name) == {"production": "1"}
    canary = registry.transition(
        name, 2, Stage.CANARY, traffic=10, actor="ana", reason="idx clients",
        allow_signature_change=True,
    )  # fmt: skip
    assert (canary.stage, canary.tags["modelgate.signature_change"]) == (
        Stage.CANARY,
        "idx clients",
    )
    last = registry.history(name)[-1]
    assert (last.version, last.actor) == (2, "ana")
    assert last.reason.startswith("signature change allowed (input 'input' is missing")


def test_bad_transitions_are_refused(
    client: MlflowClient,
    registry: MlflowRegistry,
    name: str,
    tmp_path: Path,
    model_files: dict[str, bytes],
) -> None:
    for _ in range(3):
        publish(client, tmp_path, name, {"model.onnx": model_files["lookup"]})
    legacy_stage(client, name, "3", "Staging")
    client.set_model_version_tag(name, "3", "modelgate.traffic", "80")
    with pytest.raises(InvalidRequestError, match="needs a traffic share"):
        registry.transition(name, 1, Stage.CANARY)
    with pytest.raises(InvalidRequestError, match="between 0 and 100"):
        registry.transition(name, 1, Stage.SHADOW, traffic=101)
    with pytest.raises(InvalidRequestError, match="staging"):
        registry.transition(name, 1, Stage.STAGING)
    with pytest.raises(ConflictError, match="100"):
        registry.transition(name, 1, Stage.CANARY, traffic=30)
    with pytest.raises(NotFoundError):
        registry.transition(name, 9, Stage.PRODUCTION)
    with pytest.raises(NotFoundError):
        registry.transition("no-such-model", 1, Stage.PRODUCTION)
    with pytest.raises(NotFoundError):
        registry.get(name, 9)
    assert registry.list_versions("no-such-model") == []
    with pytest.raises(RegistryError, match="register models through MLflow"):
        registry.register(name, model_files["lookup"])
    assert _aliases(client, name) == {}


def test_open_registry_builds_it_from_the_location(mlflow_url: str) -> None:
    registry = open_registry(f"mlflow+{mlflow_url}", token="secret")
    assert isinstance(registry, MlflowRegistry)
    with registry:
        assert registry.base_url == mlflow_url
        assert isinstance(registry.list_versions(), list)


def test_an_unreachable_server_is_unavailable() -> None:
    port = _free_port()  # nothing listens there any more
    started = time.monotonic()
    with pytest.raises(UnavailableError, match="unreachable"):
        MlflowRegistry(f"http://127.0.0.1:{port}", timeout=30).generation()
    # Refused at once, not after the 30 s timeout (a generous bound on a loaded machine).
    assert time.monotonic() - started < 10

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(UnavailableError):
            MlflowRegistry(url, timeout=0.5).list_versions()


@contextlib.contextmanager
def _serving(mlflow_url: str, tmp_path: Path) -> Iterator[tuple[str, ServerProcess]]:
    """`modelgate serve --registry mlflow+http://...` as a subprocess: its HTTP address and
    the process (for its log); always stopped afterwards."""
    argv = [sys.executable, "-m", "modelgate", "serve", "--registry", f"mlflow+{mlflow_url}",
            "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]  # fmt: skip
    gateway = ServerProcess(argv, tmp_path / "gateway.log")
    try:
        found = gateway.wait_for_line(r"modelgate listening http=(\S+)", timeout=60)
        yield f"http://{found.group(1)}", gateway
    finally:
        assert gateway.stop() == 0


def test_a_gateway_follows_mlflow_aliases(
    client: MlflowClient, mlflow_url: str, tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    """`modelgate serve --registry mlflow+http://...` as a subprocess: moving aliases and the
    traffic tag in MLflow is a rollout."""
    name = f"gw-{uuid.uuid4().hex[:8]}"
    files = {"model.onnx": model_files["classifier"]}
    v1, _ = publish(client, tmp_path, name, files)
    v2, _ = publish(client, tmp_path, name, files)
    client.set_registered_model_alias(name, "champion", v1)
    with _serving(mlflow_url, tmp_path) as (http, gateway):
        gateway.wait_http_ok(f"{http}/v2/models/{name}/ready", timeout=60)
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 8],
                            "data": [0.5] * 8}]}  # fmt: skip

        def versions(n: int) -> set[str]:
            answers = [httpx.post(f"{http}/v2/models/{name}/infer", json=body) for _ in range(n)]
            assert all(a.status_code == 200 for a in answers), answers[0].text
            return {str(a.json()["model_version"]) for a in answers}

        def eventually(expected: set[str], n: int = 40, timeout: float = 30.0) -> None:
            deadline = time.monotonic() + timeout
            while versions(n) != expected:
                assert time.monotonic() < deadline, f"never served {expected}"
                time.sleep(0.2)

        assert versions(10) == {v1}
        client.set_model_version_tag(name, v2, "modelgate.traffic", "50")
        client.set_registered_model_alias(name, "challenger", v2)
        eventually({v1, v2})
        client.delete_registered_model_alias(name, "challenger")
        client.set_registered_model_alias(name, "champion", v2)
        eventually({v2})


def test_a_champion_with_no_onnx_file_leaves_the_gateway_ready(
    client: MlflowClient, mlflow_url: str, tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    """Issue 13: a version that cannot load, set to production in MLflow, used to turn
    `/v2/health/ready` to 503 for every model. Now that model alone is not ready, says why
    in the log, and the gateway stays in rotation."""
    good, bad = f"good-{uuid.uuid4().hex[:8]}", f"bad-{uuid.uuid4().hex[:8]}"
    client.set_registered_model_alias(
        good, "champion", publish(client, tmp_path, good, {"model.onnx": model_files["lookup"]})[0]
    )
    bad_version, _ = publish(client, tmp_path, bad, {"weights.bin": b"\0"})
    client.set_registered_model_alias(bad, "champion", bad_version)
    with _serving(mlflow_url, tmp_path) as (http, gateway):
        gateway.wait_http_ok(f"{http}/v2/health/ready", timeout=60)
        assert httpx.get(f"{http}/v2/models/{good}/ready").status_code == 200
        assert httpx.get(f"{http}/v2/models/{bad}/ready").status_code == 503
        gateway.wait_for_line(
            rf"model '{bad}' version {bad_version} failed to load: .*no \.onnx file", timeout=60
        )
