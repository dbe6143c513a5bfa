"""Scoped registry tokens: admin, write and read per model or name prefix, on the real
registry server; each scope allowed and denied with its status."""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import serving_registry
from loadtest.procs import ServerProcess
from modelgate.registry.server import build_app, load_tokens
from modelgate.registry.store import RegistryStore
from modelgate.registry.types import Stage

TOKENS = """\
# legacy lines (no scope) stay admin
legacy-bare-secret
ops:pw-ops
root:pw-root admin
fraud-ci:pw-fraud write:fraud-*
churn-ci:pw-churn write:churn read:fraud-a
dash:pw-dash read:fraud-*
"""
SECRETS = ["legacy-bare-secret", "pw-ops", "pw-root", "pw-fraud", "pw-churn", "pw-dash"]


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


@pytest.fixture
def api(tmp_path: Path, model_files: dict[str, bytes]) -> Iterator[httpx.Client]:
    """A registry with reads protected, models fraud-a, fraud-b and churn in production."""
    store = RegistryStore(tmp_path / "store", create=True)
    for name in ("fraud-a", "fraud-b", "churn"):
        store.register(name, model_files["classifier"], stage=Stage.PRODUCTION)
    (tmp_path / "tokens").write_text(TOKENS)
    tokens = load_tokens(tmp_path / "tokens")
    app = build_app(store, tmp_path / "incoming", tokens=tokens, protect_reads=True)
    with serving_registry(app) as url, httpx.Client(base_url=f"{url}/api/v1/") as client:
        yield client


def register(api: httpx.Client, secret: str, name: str, model: bytes) -> httpx.Response:
    sha = hashlib.sha256(model).hexdigest()
    api.put(f"artifacts/{sha}", content=model, headers=bearer(secret))
    return api.post(f"models/{name}/versions", json={"sha256": sha}, headers=bearer(secret))


def transition(api: httpx.Client, secret: str, name: str) -> int:
    body = {"stage": "staging"}
    return api.post(f"models/{name}/versions/1/transition", json=body, headers=bearer(secret))\
        .status_code  # fmt: skip


def names(api: httpx.Client, secret: str) -> list[str]:
    answer = api.get("models", headers=bearer(secret))
    assert answer.status_code == 200
    return sorted({v["name"] for v in answer.json()["versions"]})


def assert_denied(answer: httpx.Response, status: int, error: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["www-authenticate"].startswith('Bearer realm="modelgate-registry"')
    if error:
        assert f'error="{error}"' in answer.headers["www-authenticate"]


def test_admin_tokens_with_or_without_the_scope_may_do_everything(
    api: httpx.Client, model_files: dict[str, bytes]
) -> None:
    for secret in ("legacy-bare-secret", "pw-ops", "pw-root"):
        assert {"churn", "fraud-a", "fraud-b"} <= set(names(api, secret))
        assert transition(api, secret, "churn") == 200
        assert register(api, secret, "anything", model_files["classifier"]).status_code == 201
    history = api.get("history", headers=bearer("pw-ops")).json()["transitions"]
    assert {t["actor"] for t in history if t["to_stage"] == "staging"} == {"token", "ops", "root"}


def test_a_write_scope_covers_its_models_only(
    api: httpx.Client, model_files: dict[str, bytes]
) -> None:
    model = model_files["classifier"]
    assert register(api, "pw-fraud", "fraud-new", model).status_code == 201
    assert transition(api, "pw-fraud", "fraud-a") == 200
    assert names(api, "pw-fraud") == ["fraud-a", "fraud-b", "fraud-new"]  # writers read
    denied = register(api, "pw-fraud", "churn", model)
    assert_denied(denied, 403, "insufficient_scope")
    assert denied.json() == {
        "error": "token 'fraud-ci' may not write model 'churn': ask for a token with that scope"
    }
    assert transition(api, "pw-fraud", "churn") == 403
    assert_denied(api.get("models/churn/versions/1", headers=bearer("pw-fraud")), 403, "")
    # An exact name is no prefix: write:churn does not cover churn-2.
    assert register(api, "pw-churn", "churn", model).status_code == 201
    assert register(api, "pw-churn", "churn-2", model).status_code == 403
    assert transition(api, "pw-churn", "fraud-a") == 403  # read:fraud-a reads, no more
    assert names(api, "pw-churn") == ["churn", "fraud-a"]
    assert api.get("models/fraud-a/versions", headers=bearer("pw-churn")).status_code == 200


def test_a_read_scope_reads_its_models_and_writes_nothing(
    api: httpx.Client, model_files: dict[str, bytes]
) -> None:
    model = model_files["classifier"]
    assert names(api, "pw-dash") == ["fraud-a", "fraud-b"]
    assert api.get("generation", headers=bearer("pw-dash")).status_code == 200
    history = api.get("history", headers=bearer("pw-dash")).json()["transitions"]
    assert {t["name"] for t in history} == {"fraud-a", "fraud-b"}
    assert api.get("models?name=churn", headers=bearer("pw-dash")).json() == {"versions": []}
    assert_denied(api.get("models/churn/versions", headers=bearer("pw-dash")), 403, "")
    sha = hashlib.sha256(model).hexdigest()
    assert api.get(f"artifacts/{sha}", headers=bearer("pw-dash")).content == model
    upload = api.put(f"artifacts/{sha}", content=model, headers=bearer("pw-dash"))
    assert_denied(upload, 403, "insufficient_scope")
    assert_denied(register(api, "pw-dash", "fraud-a", model), 403, "insufficient_scope")
    assert transition(api, "pw-dash", "fraud-a") == 403


def test_no_token_and_a_wrong_token(api: httpx.Client, model_files: dict[str, bytes]) -> None:
    assert_denied(api.get("models"), 401, "")
    assert_denied(api.post("models/churn/versions", json={}), 401, "")
    assert_denied(api.get("models", headers=bearer("pw-nobody")), 403, "invalid_token")
    assert_denied(register(api, "pw-fraud-", "fraud-a", model_files["classifier"]), 403, "")
    assert names(api, "pw-root") == ["churn", "fraud-a", "fraud-b"]  # still serving


def test_secrets_appear_in_no_log_line_nor_answer(
    api: httpx.Client, model_files: dict[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answers = [register(api, secret, "fraud-x", model_files["classifier"]) for secret in SECRETS]
    answers.append(api.get("history", headers=bearer("pw-root")))
    text = caplog.text + "".join(a.text for a in answers) + str([dict(a.headers) for a in answers])
    assert not [secret for secret in SECRETS if secret in text]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("ci:pw delete", ":1: unknown scope 'delete'"),
        ("ci:pw write:fraud/x*", ":1: scope 'write:fraud/x*': a pattern is a model name"),
        ("ci:pw admin:fraud", ":1: admin takes no pattern"),
        ("pw write", ":1: scopes need a named token"),
        ("c i:pw", ":1: expected 'name:secret [scope ...]'"),
    ],
)
def test_token_file_mistakes_name_the_line_and_never_the_secret(
    tmp_path: Path, line: str, message: str
) -> None:
    (tmp_path / "tokens").write_text(line + "\n")
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("*", r"\*")) as e:
        load_tokens(tmp_path / "tokens")
    assert "pw" not in str(e.value).replace(str(tmp_path), "")


def _statuses_until(url: str, want: dict[str, int], seconds: float = 30.0) -> dict[str, int]:
    """The status of a listing with each secret, asked again until they are `want` (or
    `seconds` have passed): the server looks at the file at most once a second."""
    got: dict[str, int] = {}
    with httpx.Client(base_url=f"{url}/api/v1/", timeout=10) as client:
        for _ in range(max(1, round(seconds / 0.2))):
            got = {s: client.get("models", headers=bearer(s)).status_code for s in want}
            if got == want:
                break
            time.sleep(0.2)
    return got


def test_the_server_takes_up_a_changed_token_file_without_a_restart(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("ops:pw-ops\n")
    argv = [sys.executable, "-m", "modelgate", "registry", "--store", str(tmp_path / "store"),
            "serve", "--port", "0", "--create-store", "--protect-reads",
            "--token-file", str(tokens)]  # fmt: skip
    server = ServerProcess(argv, tmp_path / "registry.log")
    try:
        url = server.wait_for_line(r"modelgate registry listening on (http://\S+)", 60).group(1)
        assert _statuses_until(url, {"pw-ops": 200, "pw-new": 403}, seconds=0) == {
            "pw-ops": 200,
            "pw-new": 403,
        }
        tokens.write_text("ops:pw-ops\nnew:pw-new read\n")  # added
        want = {"pw-ops": 200, "pw-new": 200}
        assert _statuses_until(url, want) == want
        tokens.write_text("new:pw-new read\n")  # removed
        want = {"pw-ops": 403, "pw-new": 200}
        assert _statuses_until(url, want) == want
        tokens.write_text("new:pw-new read\nops:pw-ops reed\n")  # invalid: kept as it was
        for _ in range(150):
            if "still using the previous tokens" in server.log_tail(50):
                break
            _statuses_until(url, want, seconds=0)
            time.sleep(0.2)
        assert _statuses_until(url, want, seconds=2) == want
        log = (tmp_path / "registry.log").read_text()
        assert log.count("still using the previous tokens") == 1
        assert f"{tokens}:2: unknown scope 'reed'" in log
        assert "pw-" not in log
    finally:
        server.stop()
