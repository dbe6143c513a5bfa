"""Model names follow one syntax everywhere: the store, the registry server, the CLI, and
the gateway, which serves no name outside it whatever the backend holds."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from conftest import loopback_settings, running, scrape, serving_registry
from modelgate.registry.errors import InvalidRequestError
from modelgate.registry.remote import RemoteRegistry
from modelgate.registry.server import build_app, load_tokens
from modelgate.registry.store import RegistryStore
from modelgate.registry.types import Stage

BAD_NAMES = {
    "newline": "fraud\n2026-12-02 INFO registered admin v1",
    "nul": "fraud\x00",
    "bidi override": "fraud\u202eexe.",
    "5,000 characters": "m" * 5000,
    "V1 verb": "x:predict",
    "slash": "a/b",
    "leading dot": "..",
    "leading dash": "-m",
    "space": "my model",
    "empty": "",
    "non-ASCII letter": "modèle",
}
GOOD_NAMES = ["m", "fraud-detector_v2.onnx", "0", "A" * 128]


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_the_store_refuses_names_outside_the_syntax(
    tmp_path: Path, model_files: dict[str, bytes], name: str
) -> None:
    store = RegistryStore(tmp_path, create=True)
    with pytest.raises(InvalidRequestError) as caught:
        store.register(name, model_files["classifier"])
    message = str(caught.value)
    assert message.startswith("invalid model name ")
    assert message.isprintable() and message.isascii() and len(message) < 300
    assert store.list_versions() == []


def test_names_inside_the_syntax_are_accepted(
    tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    store = RegistryStore(tmp_path, create=True)
    for name in GOOD_NAMES:
        assert store.register(name, model_files["classifier"]).name == name
    with pytest.raises(InvalidRequestError):
        store.register("A" * 129, model_files["classifier"])


def test_the_registry_server_answers_400_and_the_client_uploads_nothing(
    tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    store = RegistryStore(tmp_path / "store", create=True)
    (tmp_path / "tokens").write_text("ci:secret\n")
    app = build_app(store, tmp_path / "incoming", tokens=load_tokens(tmp_path / "tokens"))
    model = model_files["classifier"]
    with serving_registry(app) as url, httpx.Client(base_url=f"{url}/api/v1/") as raw:
        auth = {"authorization": "Bearer secret"}
        with RemoteRegistry(url, token="secret") as client:
            sha = client.register("good", model).sha256
            for name in BAD_NAMES.values():
                with pytest.raises(InvalidRequestError, match="invalid model name"):
                    client.register(name, model + b"\x00")  # refused before the upload
                if name in ("", ".."):
                    continue  # no such path segment reaches the server (httpx normalises)
                answer = raw.post(
                    f"models/{quote(name, safe='')}/versions",
                    json={"sha256": sha},
                    headers=auth,
                )
                assert answer.status_code == 400, (name, answer.text)
                assert answer.json()["code"] == "invalid_request"
                assert answer.json()["error"].startswith("invalid model name")
        assert raw.get("models").json()["versions"][0]["name"] == "good"
        assert len(raw.get("models").json()["versions"]) == 1
    assert not (tmp_path / "incoming").exists() or list((tmp_path / "incoming").iterdir()) == []


def test_the_cli_refuses_with_one_line_and_status_2(
    tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    store = tmp_path / "store"
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(model_files["classifier"])
    for name in (BAD_NAMES["newline"], BAD_NAMES["bidi override"], BAD_NAMES["5,000 characters"]):
        done = subprocess.run(
            [sys.executable, "-m", "modelgate", "registry", "--store", str(store), "register",
             name, str(onnx_file)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert (done.returncode, done.stdout) == (2, "")
        assert done.stderr.startswith("error: invalid model name "), done.stderr
        assert done.stderr.count("\n") == 1 and len(done.stderr) < 300
        assert done.stderr.isascii()


def _smuggle(store: RegistryStore, name: str, like: str) -> None:
    """Copy `like`'s production version under `name` straight into the database, as a store
    written by older code (or a registry that does not check names, like MLflow) holds it."""
    with sqlite3.connect(store.root / "registry.db") as db:
        db.execute(
            "INSERT INTO model_versions SELECT ?, version, sha256, size, stage, traffic, created, "
            "inputs, outputs, description, tags, reference FROM model_versions WHERE name = ?",
            (name, like),
        )
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")


async def test_the_gateway_serves_no_name_outside_the_syntax(
    tmp_path: Path, model_files: dict[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    store = RegistryStore(tmp_path / "store", create=True)
    store.register("classifier", model_files["classifier"], stage=Stage.PRODUCTION)
    smuggled = [n for n in BAD_NAMES.values() if n and "/" not in n]
    for name in smuggled:
        _smuggle(store, name, "classifier")
    caplog.set_level(logging.WARNING, logger="modelgate.gateway.core.deployments")
    async with running(loopback_settings(store), store) as gateway:
        await gateway.deployments.refresh()  # a second read logs nothing new
        assert gateway.deployments.names() == ["classifier"]
        assert gateway.addresses is not None
        async with httpx.AsyncClient(base_url=f"http://{gateway.addresses.http}") as http:
            answer = await http.get("/v2/models/x:predict")
            assert answer.status_code == 404
            models = (await http.post("/v2/repository/index", json={})).json()
            assert {m["name"] for m in models} == {"classifier"}
        labels = {value for _, pairs in await scrape(gateway) for _, value in pairs}
    refused = [r.getMessage() for r in caplog.records if "not serving model" in r.getMessage()]
    assert len(refused) == len(smuggled)
    for line in refused:
        assert line.isascii() and line.isprintable() and len(line) < 400
    assert not any(name in labels for name in smuggled)
