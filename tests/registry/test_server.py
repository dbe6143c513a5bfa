"""The registry over HTTP: the real server on 127.0.0.1, a real store, `RemoteRegistry`."""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import modelzoo
from conftest import peak_growth, serving_registry
from modelgate.monitor.profile import build_profile
from modelgate.registry.client import open_registry
from modelgate.registry.errors import (
    ArtifactIntegrityError,
    AuthError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    SignatureMismatchError,
    UnavailableError,
)
from modelgate.registry.remote import RemoteRegistry
from modelgate.registry.server import build_app, load_tokens
from modelgate.registry.store import RegistryStore
from modelgate.registry.types import ModelVersion, Stage
from modelgate.tokens import secret_digest

WRITER = "s3cret-ci"
TOKENS = f"# who may write\nci:{WRITER}\n\nalice : pw-alice\n"


@pytest.fixture
def registry_store(tmp_path: Path) -> RegistryStore:
    return RegistryStore(tmp_path / "store", create=True)


@pytest.fixture
def url(tmp_path: Path, registry_store: RegistryStore) -> Iterator[str]:
    """A registry server with the two tokens of TOKENS, reads open."""
    (tmp_path / "tokens").write_text(TOKENS)
    tokens = load_tokens(tmp_path / "tokens")
    with serving_registry(build_app(registry_store, tmp_path / "incoming", tokens=tokens)) as base:
        yield base


@pytest.fixture
def writer(url: str) -> Iterator[RemoteRegistry]:
    with RemoteRegistry(url, token=WRITER) as client:
        yield client


@pytest.fixture
def raw(url: str) -> Iterator[httpx.Client]:
    """Plain HTTP to the registry API, for statuses and headers."""
    with httpx.Client(base_url=f"{url}/api/v1/") as client:
        yield client


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def leftovers(incoming: Path) -> list[Path]:
    """Files an upload left in the server's incoming folder."""
    return list(incoming.iterdir()) if incoming.exists() else []


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the happy path -----------------------------------------------------------------------


def test_register_list_get_transition_history_round_trip(
    writer: RemoteRegistry, registry_store: RegistryStore, model_files: dict[str, bytes]
) -> None:
    model = model_files["classifier"]
    generation = writer.generation()
    sample = np.random.default_rng(3).normal(size=(64, modelzoo.FEATURES)).astype(np.float32)
    reference = build_profile({"input": sample}, {}).to_json()
    first = writer.register(
        "fraud", model, description="first", tags={"team": "risk"}, reference=reference
    )
    assert (first.name, first.version, first.stage) == ("fraud", 1, Stage.NONE)
    assert (first.sha256, first.size) == (sha(model), len(model))
    assert (first.description, first.tags, first.reference) == (
        "first",
        {"team": "risk"},
        reference,
    )
    assert writer.generation() != generation

    second = writer.register("fraud", model_files["lookup"], stage=Stage.STAGING)
    assert writer.list_versions("fraud") == registry_store.list_versions("fraud")
    assert [v.version for v in writer.list_versions()] == [1, 2]
    assert writer.list_versions("nobody") == []
    assert writer.get("fraud", 2) == second == registry_store.get("fraud", 2)
    assert writer.read_artifact(first) == model

    promoted = writer.transition("fraud", 1, Stage.PRODUCTION, reason="passed review")
    assert promoted.stage is Stage.PRODUCTION
    canary = writer.transition(
        "fraud", 2, Stage.CANARY, traffic=10, reason="lookup", allow_signature_change=True
    )
    assert (canary.stage, canary.traffic) == (Stage.CANARY, 10.0)

    history = writer.history("fraud")
    assert history == registry_store.history("fraud")
    moves = [(t.version, t.from_stage, t.to_stage, t.traffic, t.actor) for t in history]
    assert (1, Stage.NONE, Stage.PRODUCTION, None, "ci") in moves
    assert (2, Stage.STAGING, Stage.CANARY, 10.0, "ci") in moves
    assert [t.reason for t in history if t.to_stage is Stage.PRODUCTION] == ["passed review"]
    assert writer.history("nobody") == []
    assert writer.history() == registry_store.history()


def test_the_actor_is_the_token_and_whom_it_acts_for(
    url: str, writer: RemoteRegistry, model_files: dict[str, bytes]
) -> None:
    writer.register("m", model_files["classifier"], actor="bob")
    writer.transition("m", 1, Stage.STAGING, actor="bob")
    writer.transition("m", 1, Stage.PRODUCTION, actor="ci")
    with RemoteRegistry(url, token="pw-alice") as alice:
        alice.transition("m", 1, Stage.ARCHIVED)
    actors = [(t.to_stage, t.actor) for t in writer.history("m")]
    assert (Stage.STAGING, "ci (on behalf of bob)") in actors
    assert (Stage.PRODUCTION, "ci") in actors
    assert (Stage.ARCHIVED, "alice") in actors


def test_registering_a_known_artifact_does_not_upload_it_again(
    tmp_path: Path, writer: RemoteRegistry, raw: httpx.Client, model_files: dict[str, bytes]
) -> None:
    model = model_files["classifier"]
    first = writer.register("a", model)
    assert raw.head(f"artifacts/{first.sha256}").status_code == 200
    # Registered straight from the stored artifact: no PUT needed.
    response = raw.post("models/b/versions", json={"sha256": first.sha256}, headers=bearer(WRITER))
    assert response.status_code == 201, response.text
    assert ModelVersion.from_json(response.json()).sha256 == first.sha256
    assert leftovers(tmp_path / "incoming") == []  # uploads are cleared once registered


def test_open_registry_picks_the_http_client(url: str) -> None:
    client = open_registry(url, token=WRITER)
    assert isinstance(client, RemoteRegistry)
    with client:
        assert client.list_versions() == []


def test_concurrent_writers_get_distinct_versions(
    writer: RemoteRegistry, model_files: dict[str, bytes]
) -> None:
    models = [model_files["classifier"], model_files["lookup"]] * 4
    with ThreadPoolExecutor(max_workers=4) as pool:
        versions = list(pool.map(lambda m: writer.register("busy", m), models))
    assert sorted(v.version for v in versions) == list(range(1, 9))
    assert [v.version for v in writer.list_versions("busy")] == list(range(1, 9))
    for version in versions:
        assert writer.read_artifact(version) == models[0 if version.sha256 == sha(models[0]) else 1]


def test_concurrent_registrations_of_one_upload_all_succeed(
    writer: RemoteRegistry, model_files: dict[str, bytes]
) -> None:
    # The first registration takes the upload away; the others register the stored copy
    # (a FileNotFoundError answered 500 before).
    model = model_files["classifier"]
    for name in ("same0", "same1", "same2"):
        with ThreadPoolExecutor(max_workers=8) as pool:
            versions = list(pool.map(writer.register, [name] * 8, [model] * 8))
        assert sorted(v.version for v in versions) == list(range(1, 9))
        assert {v.sha256 for v in versions} == {sha(model)}


# --- authentication -----------------------------------------------------------------------


def test_writes_need_the_right_token(
    url: str, raw: httpx.Client, model_files: dict[str, bytes]
) -> None:
    with RemoteRegistry(url) as anonymous, pytest.raises(AuthError, match="bearer token"):
        anonymous.register("m", model_files["classifier"])
    with (
        RemoteRegistry(url, token="wrong") as stranger,
        pytest.raises(AuthError, match="not valid"),
    ):
        stranger.register("m", model_files["classifier"])

    missing = raw.post("models/m/versions", json={"sha256": "0" * 64})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = raw.post("models/m/versions", json={"sha256": "0" * 64}, headers=bearer("wrong"))
    assert wrong.status_code == 403
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert wrong.json() == {"error": "the bearer token is not valid for this registry"}
    # Reads stay open, and the server still answers.
    assert raw.get("models").json() == {"versions": []}


def test_without_a_token_file_the_registry_is_read_only(
    tmp_path: Path, registry_store: RegistryStore, model_files: dict[str, bytes]
) -> None:
    registry_store.register("m", model_files["classifier"])
    with serving_registry(build_app(registry_store, tmp_path / "incoming")) as url:
        with RemoteRegistry(url, token="anything") as client:
            assert [v.name for v in client.list_versions()] == ["m"]
            with pytest.raises(AuthError, match="read-only: start it with --token-file"):
                client.transition("m", 1, Stage.PRODUCTION)
        response = httpx.put(f"{url}/api/v1/artifacts/{'0' * 64}", content=b"x")
        assert response.status_code == 403
        assert "read-only" in response.json()["error"]
    assert registry_store.get("m", 1).stage is Stage.NONE


def test_protected_reads_need_a_token(
    tmp_path: Path, registry_store: RegistryStore, model_files: dict[str, bytes]
) -> None:
    registry_store.register("m", model_files["classifier"])
    tokens = load_tokens_from(tmp_path, TOKENS)
    app = build_app(registry_store, tmp_path / "incoming", tokens=tokens, protect_reads=True)
    with serving_registry(app) as url:
        with RemoteRegistry(url) as anonymous, pytest.raises(AuthError, match="for reads"):
            anonymous.list_versions()
        with RemoteRegistry(url, token="wrong") as stranger, pytest.raises(AuthError):
            stranger.generation()
        assert httpx.get(f"{url}/api/v1/generation").status_code == 401
        assert httpx.get(f"{url}/api/v1/generation", headers=bearer("wrong")).status_code == 403
        with RemoteRegistry(url, token="pw-alice") as alice:
            (version,) = alice.list_versions()
            assert alice.read_artifact(version) == model_files["classifier"]


def test_protecting_reads_without_tokens_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs tokens"):
        build_app(RegistryStore(tmp_path, create=True), tmp_path / "incoming", protect_reads=True)


def load_tokens_from(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "token-file"
    path.write_text(text)
    return load_tokens(path)


def test_token_files(tmp_path: Path) -> None:
    tokens = load_tokens_from(tmp_path, "# comment\n\nci:abc\nbare-secret\n  ops : x:y  \n")
    assert [(t.name, t.digest) for t in tokens] == [
        ("ci", secret_digest("abc")),
        ("token", secret_digest("bare-secret")),
        ("ops", secret_digest("x:y")),
    ]
    with pytest.raises(ValueError, match="no tokens"):
        load_tokens_from(tmp_path, "# nothing\n")
    with pytest.raises(ValueError, match=":2: this secret is already listed"):
        load_tokens_from(tmp_path, "a:same\nb:same\n")
    with pytest.raises(ValueError, match=":1: expected"):
        load_tokens_from(tmp_path, "name:\n")


# --- bad input ----------------------------------------------------------------------------


def test_unknown_models_and_versions_are_not_found(
    writer: RemoteRegistry, raw: httpx.Client, model_files: dict[str, bytes]
) -> None:
    writer.register("m", model_files["classifier"])
    with pytest.raises(NotFoundError, match="nope"):
        writer.get("nope", 1)
    with pytest.raises(NotFoundError):
        writer.get("m", 7)
    with pytest.raises(NotFoundError):
        writer.transition("m", 7, Stage.PRODUCTION)
    with pytest.raises(NotFoundError):
        writer.transition("nope", 1, Stage.PRODUCTION)
    assert raw.get("models/nope/versions/1").status_code == 404
    assert raw.get("models/nope/versions").status_code == 404
    assert raw.get(f"artifacts/{'a' * 64}").status_code == 404
    assert writer.get("m", 1).stage is Stage.NONE


@pytest.mark.parametrize("traffic", [-1, 100.5, 250])
def test_a_traffic_share_outside_0_to_100_is_refused(
    writer: RemoteRegistry, model_files: dict[str, bytes], traffic: float
) -> None:
    writer.register("m", model_files["classifier"])
    with pytest.raises(InvalidRequestError, match="traffic"):
        writer.transition("m", 1, Stage.CANARY, traffic=traffic)
    assert writer.get("m", 1).stage is Stage.NONE
    assert writer.transition("m", 1, Stage.CANARY, traffic=5).traffic == 5.0


def test_a_change_that_conflicts_with_the_registry_is_409(
    writer: RemoteRegistry, raw: httpx.Client, model_files: dict[str, bytes]
) -> None:
    writer.register("m", model_files["classifier"], stage=Stage.CANARY, traffic=60)
    writer.register("m", model_files["classifier"])
    with pytest.raises(ConflictError, match="would add up to 110%"):
        writer.transition("m", 2, Stage.CANARY, traffic=50)
    response = raw.post(
        "models/m/versions/2/transition",
        json={"stage": "canary", "traffic": 50},
        headers=bearer(WRITER),
    )
    assert response.status_code == 409
    assert [(v.stage, v.traffic) for v in writer.list_versions("m")] == [
        (Stage.CANARY, 60.0),
        (Stage.NONE, None),
    ]
    assert writer.transition("m", 2, Stage.CANARY, traffic=40).traffic == 40.0


GOOD_SHA = "0" * 64


def test_a_version_that_does_not_fit_production_is_409_signature_mismatch(
    writer: RemoteRegistry, raw: httpx.Client, model_files: dict[str, bytes]
) -> None:
    writer.register("m", model_files["classifier"], stage=Stage.PRODUCTION)
    missing = r"input 'input' is missing \(version 2 has 'idx'\)"
    with pytest.raises(SignatureMismatchError, match=missing):
        writer.register("m", model_files["lookup"], stage=Stage.CANARY, traffic=10)
    assert [v.version for v in writer.list_versions("m")] == [1]
    writer.register("m", model_files["lookup"])
    answer = raw.post(
        "models/m/versions/2/transition", json={"stage": "shadow"}, headers=bearer(WRITER)
    )
    assert answer.status_code == 409
    assert answer.json()["code"] == "signature_mismatch"
    assert re.search(missing, answer.json()["error"])
    with pytest.raises(SignatureMismatchError, match=missing):
        writer.transition("m", 2, Stage.SHADOW)
    with pytest.raises(InvalidRequestError, match="needs a reason"):
        writer.transition("m", 2, Stage.SHADOW, allow_signature_change=True)
    bad = raw.post(
        "models/m/versions/2/transition",
        json={"stage": "shadow", "allow_signature_change": "yes", "reason": "r"},
        headers=bearer(WRITER),
    )
    assert (bad.status_code, bad.json()["code"]) == (400, "invalid_request")
    shadow = writer.transition(
        "m", 2, Stage.SHADOW, reason="idx clients", allow_signature_change=True
    )
    assert shadow.tags == {"modelgate.signature_change": "idx clients"}
    last = writer.history("m")[-1]
    assert (last.version, last.to_stage, last.actor) == (2, Stage.SHADOW, "ci")
    assert last.reason.startswith("signature change allowed (input 'input' is missing")
    assert last.reason.endswith("): idx clients")


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "models/m/versions/1/transition", b"{not json", 400, "not valid JSON"),
        ("POST", "models/m/versions/1/transition", b"[1, 2]", 400, "JSON object"),
        ("POST", "models/m/versions/1/transition", b'{"stage": "prod"}', 400, "unknown stage"),
        ("POST", "models/m/versions/1/transition", b"{}", 400, "'stage' is required"),
        ("POST", "models/m/versions/1/transition", b'{"stag": "x"}', 400, "unknown field"),
        (
            "POST",
            "models/m/versions/1/transition",
            b'{"stage": "canary", "traffic": "10"}',
            400,
            "'traffic' has the wrong type",
        ),
        (
            "POST",
            "models/m/versions/1/transition",
            b'{"stage": "canary", "traffic": true}',
            400,
            "'traffic' has the wrong type",
        ),
        (
            "POST",
            "models/m/versions/x/transition",
            b'{"stage": "none"}',
            400,
            "whole number from 1",
        ),
        ("POST", "models/m/versions", b'{"sha256": "abc"}', 400, "not a sha256"),
        ("POST", "models/m/versions", b"{}", 400, "'sha256' is required"),
        (
            "POST",
            "models/m/versions",
            b'{"sha256": "' + GOOD_SHA.encode() + b'", "tags": {"a": 1}}',
            400,
            "strings to strings",
        ),
        ("POST", "models/m/versions", b'{"sha256": "' + GOOD_SHA.encode() + b'"}', 404, "PUT"),
        ("PUT", f"artifacts/{GOOD_SHA}", b"not these bytes", 400, "sha256 is"),
        ("PUT", "artifacts/ABC", b"x", 400, "not a sha256"),
        ("GET", "models/m/versions/0", b"", 400, "whole number from 1"),
        ("GET", "models/m/versions/" + "9" * 5000, b"", 400, "whole number from 1"),
        (
            "POST",
            "models/m/versions/99999999999999999999/transition",
            b'{"stage": "staging"}',
            400,
            "whole number from 1",
        ),
        ("DELETE", "models/m/versions/1", b"", 405, "not allowed"),
        ("GET", "models/m/versions/1/transition", b"", 405, "allowed: POST"),
        ("GET", "nothing", b"", 404, "no such endpoint"),
        ("GET", "../v2/models", b"", 404, "no such endpoint"),
    ],
)
def test_bad_requests_get_a_clear_status_and_the_next_request_works(
    raw: httpx.Client,
    writer: RemoteRegistry,
    model_files: dict[str, bytes],
    method: str,
    path: str,
    body: bytes,
    status: int,
    message: str,
) -> None:
    writer.register("m", model_files["classifier"])
    response = raw.request(method, path, content=body, headers=bearer(WRITER))
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert writer.get("m", 1).stage is Stage.NONE
    assert raw.get("models/m/versions/1").status_code == 200


def test_a_file_that_is_not_onnx_is_refused(writer: RemoteRegistry) -> None:
    with pytest.raises(InvalidRequestError):
        writer.register("m", b"definitely not an onnx model")
    assert writer.list_versions() == []


def test_bodies_over_the_limits_are_refused(
    tmp_path: Path, registry_store: RegistryStore, model_files: dict[str, bytes]
) -> None:
    tokens = load_tokens_from(tmp_path, TOKENS)
    app = build_app(
        registry_store,
        tmp_path / "incoming",
        tokens=tokens,
        max_artifact_bytes=64,
        max_json_bytes=256,
    )
    with serving_registry(app) as url, RemoteRegistry(url, token=WRITER) as client:
        with pytest.raises(InvalidRequestError, match="exceeds the limit of 64"):
            client.register("m", model_files["classifier"])
        big = httpx.put(
            f"{url}/api/v1/artifacts/{GOOD_SHA}", content=b"x" * 1000, headers=bearer(WRITER)
        )
        assert big.status_code == 413
        long_reason = httpx.post(
            f"{url}/api/v1/models/m/versions/1/transition",
            json={"stage": "production", "reason": "r" * 1000},
            headers=bearer(WRITER),
        )
        assert long_reason.status_code == 413
        assert "limit of 256" in long_reason.json()["error"]
        assert client.list_versions() == []
    assert leftovers(tmp_path / "incoming") == []  # no partial upload left behind


# --- faults -------------------------------------------------------------------------------


def test_a_corrupt_artifact_on_disk_is_never_served(
    writer: RemoteRegistry, registry_store: RegistryStore, model_files: dict[str, bytes]
) -> None:
    version = writer.register("m", model_files["classifier"])
    path = registry_store.root / "artifacts" / "sha256" / version.sha256
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match="does not match"):
        writer.read_artifact(version)
    assert writer.get("m", 1) == version  # the rest of the registry still answers


class _TamperingStore(RegistryStore):
    """A store whose artifacts change after its own check: what a bad network or proxy does."""

    def read_artifact(self, version: ModelVersion) -> bytes:
        data = bytearray(super().read_artifact(version))
        data[-1] ^= 0x01
        return bytes(data)


def test_the_client_verifies_what_it_downloads(
    tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    store = _TamperingStore(tmp_path / "store", create=True)
    version = store.register("m", model_files["classifier"])
    expected = f"does not match its sha256 {version.sha256}"
    with (
        serving_registry(build_app(store, tmp_path / "incoming")) as url,
        RemoteRegistry(url) as client,
        pytest.raises(ArtifactIntegrityError, match=expected),
    ):
        client.read_artifact(version)


class _LockedStore(RegistryStore):
    def generation(self) -> str:
        raise UnavailableError("the database is locked by a backup")


def test_an_unavailable_store_is_503_and_unavailable(tmp_path: Path) -> None:
    app = build_app(_LockedStore(tmp_path / "store", create=True), tmp_path / "incoming")
    with serving_registry(app) as url, RemoteRegistry(url) as client:
        with pytest.raises(UnavailableError, match="locked by a backup"):
            client.generation()
        assert httpx.get(f"{url}/api/v1/generation").status_code == 503
        assert client.list_versions() == []


def test_an_unreachable_registry_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with (
        RemoteRegistry(f"http://127.0.0.1:{port}", timeout=2) as client,
        pytest.raises(UnavailableError, match="unreachable"),
    ):
        client.generation()


def test_a_registry_that_does_not_answer_times_out() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)  # accepted by the kernel, never read
        port = sock.getsockname()[1]
        with (
            RemoteRegistry(f"http://127.0.0.1:{port}", timeout=0.3) as client,
            pytest.raises(UnavailableError, match="did not answer"),
        ):
            client.list_versions()


def _logged_address(process: subprocess.Popen[str]) -> str:
    """The `http://H:P` the server logs, read from its stderr (20 s at most)."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=20)
        except queue.Empty:
            pytest.fail(f"no address logged within 20 s: {''.join(seen)}")
        seen.append(line)
        found = re.search(r"listening on (http://\S+)", line)
        if found:
            return found.group(1)


@contextlib.contextmanager
def _registry_process(command: list[str]) -> Iterator[str]:
    """`modelgate registry serve` running `command`: yields its URL, then stops it with
    SIGTERM and checks it exits 0 (killed if the block failed)."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        yield _logged_address(process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


# --- the command --------------------------------------------------------------------------


def test_registry_serve_command(tmp_path: Path, model_files: dict[str, bytes]) -> None:
    (tmp_path / "tokens").write_text(TOKENS)
    command = [
        str(Path(sys.executable).parent / "modelgate"),
        "registry",
        "--store",
        str(tmp_path / "store"),
        "serve",
        "--port",
        "0",
        "--token-file",
        str(tmp_path / "tokens"),
        "--create-store",
    ]
    with _registry_process(command) as url, RemoteRegistry(url, token=WRITER) as client:
        version = client.register("m", model_files["classifier"], stage=Stage.PRODUCTION)
        assert client.read_artifact(version) == model_files["classifier"]
        assert client.history("m")[-1].actor == "ci"
    assert [v.name for v in RegistryStore(tmp_path / "store").list_versions()] == ["m"]
    assert list((tmp_path / "store").glob(".incoming-*")) == []  # uploads folder removed


def test_serve_sweeps_uploads_that_servers_left_behind(tmp_path: Path) -> None:
    store = RegistryStore(tmp_path / "store", create=True).root
    dead, alive = store / ".incoming-dead", store / ".incoming-alive"
    dead.mkdir()
    alive.mkdir()
    (dead / sha(b"old")).write_bytes(b"old")
    (dead / ".tmp-stalled").write_bytes(b"half")
    (alive / sha(b"new")).write_bytes(b"new")
    hours_ago = time.time() - 7200
    for path in (dead / sha(b"old"), dead / ".tmp-stalled", dead):
        os.utime(path, (hours_ago, hours_ago))
    command = [str(Path(sys.executable).parent / "modelgate"), "registry", "--store", str(store),
               "serve", "--port", "0", "--upload-ttl", "3600"]  # fmt: skip
    with _registry_process(command):
        assert not dead.exists()  # swept before the server listens
        assert [p.name for p in alive.iterdir()] == [sha(b"new")]
    wrong = subprocess.run([*command[:-1], "0"], capture_output=True, text=True, timeout=60)
    assert (wrong.returncode, wrong.stderr) == (
        2,
        "error: --upload-ttl is a positive number of seconds, not 0.0\n",
    )


def test_an_upload_never_registered_expires(
    tmp_path: Path, registry_store: RegistryStore, model_files: dict[str, bytes]
) -> None:
    (tmp_path / "tokens").write_text(TOKENS)
    tokens = load_tokens(tmp_path / "tokens")
    incoming = tmp_path / "incoming"
    app = build_app(registry_store, incoming, tokens=tokens, upload_ttl=0.5)
    model = model_files["classifier"]
    with serving_registry(app) as url, httpx.Client(base_url=f"{url}/api/v1/") as raw:
        put = raw.put(f"artifacts/{sha(model)}", content=model, headers=bearer(WRITER))
        assert put.status_code == 201
        deadline = time.monotonic() + 30
        while leftovers(incoming):
            assert time.monotonic() < deadline, "the upload was never swept"
            time.sleep(0.05)
        assert raw.head(f"artifacts/{sha(model)}").status_code == 404
        late = raw.post("models/m/versions", json={"sha256": sha(model)}, headers=bearer(WRITER))
        assert late.status_code == 404
        assert "has not been uploaded" in late.json()["error"]


def test_registering_a_large_upload_does_not_read_it_whole(
    tmp_path: Path, registry_store: RegistryStore
) -> None:
    """The upload is hashed and copied in slices: only the ONNX checks hold the model (once
    parsed, plus the file's bytes while parsing), never the server's copy of it as well."""
    weights = np.random.default_rng(0).normal(size=(5000, 5000)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5000])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5000])],
        [numpy_helper.from_array(weights, "w")],
    )  # fmt: skip
    model_file = tmp_path / "big.onnx"
    model_file.write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )
    del weights, graph
    size = model_file.stat().st_size  # 100 MB
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    (tmp_path / "tokens").write_text(TOKENS)
    app = build_app(registry_store, tmp_path / "incoming", tokens=load_tokens(tmp_path / "tokens"))
    with serving_registry(app) as url, httpx.Client(base_url=f"{url}/api/v1/", timeout=120) as raw:
        with model_file.open("rb") as body:
            put = raw.put(f"artifacts/{digest}", content=body, headers=bearer(WRITER))
        assert put.status_code == 201
        with peak_growth() as grown:
            answer = raw.post("models/big/versions", json={"sha256": digest},
                              headers=bearer(WRITER))  # fmt: skip
        assert answer.status_code == 201, answer.text
        # Before: the upload's bytes, then a parse and a session from them: about 3x.
        assert grown() < 2.5 * size, f"registering {size} bytes grew the peak by {grown()}"
    assert registry_store.get("big", 1).size == size
