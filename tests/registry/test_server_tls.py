"""The registry server over HTTPS (`modelgate registry serve --tls-cert-file/--tls-key-file`):
its clients (the gateway, `modelgate registry`) trust a private CA through SSL_CERT_FILE."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from certs import PARTIAL_CLIENT_HELLO, Pki, closed_before, stalled_handshakes
from conftest import filled_store, loop_thread, serving_registry
from loadtest.procs import clean_environment
from modelgate.registry.client import open_registry
from modelgate.registry.errors import LocationError
from modelgate.registry.server import READ_LIMITS, RegistryServer, build_app
from modelgate.registry.store import RegistryStore
from modelgate.tls import ServerCertificate, TlsFiles


def test_the_registry_serves_https_to_clients_that_trust_its_ca(
    tmp_path: Path, pki: Pki, model_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = filled_store(tmp_path / "store", model_files)
    tls = ServerCertificate(TlsFiles(pki.server.cert, pki.server.key))
    with serving_registry(build_app(store, tmp_path / "incoming"), tls) as url:
        assert url.startswith("https://")
        with pytest.raises(httpx.TransportError):  # plain text is not answered
            httpx.get(url.replace("https://", "http://") + "/api/v1/models", timeout=10)
        with open_registry(url) as client, pytest.raises(LocationError, match="SSL_CERT_FILE"):
            client.list_versions()
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca.cert))
        with open_registry(url) as client:
            names = {v.name for v in client.list_versions()}
    assert names == set(model_files)


def test_a_certificate_without_its_key_is_one_line(tmp_path: Path, pki: Pki) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "modelgate", "registry", "--store", str(tmp_path / "s"),
         "serve", "--port", "0", "--create-store", "--tls-cert-file", str(pki.server.cert)],
        capture_output=True, text=True, timeout=120, env=clean_environment(),
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: --tls-cert-file is set but --tls-key-file is not: TLS needs both"
    )


def test_a_handshake_that_never_completes_is_closed_after_the_head_timeout(
    tmp_path: Path, pki: Pki
) -> None:
    """Not after asyncio's 60 s: a silent client, or one that stops in its ClientHello."""
    app = build_app(RegistryStore(tmp_path / "store", create=True), tmp_path / "incoming")
    tls = ServerCertificate(TlsFiles(pki.server.cert, pki.server.key))
    limits = dataclasses.replace(READ_LIMITS, head_timeout=0.5)
    with loop_thread() as run:
        server = RegistryServer(app, "127.0.0.1", 0, limits=limits, tls=tls)
        url = run(server.start())
        try:
            address = url.removeprefix("https://")
            for sent in (b"", PARTIAL_CLIENT_HELLO):
                assert run(closed_before(address, sent, seconds=20))
            trust = ssl.create_default_context(cafile=pki.ca.cert)
            answer = httpx.get(f"{url}/api/v1/generation", verify=trust, timeout=10)
            assert answer.status_code == 200
        finally:
            run(server.stop())


def test_handshakes_under_way_count_toward_the_connection_limit(tmp_path: Path, pki: Pki) -> None:
    """With every place held by a silent TLS client, a newcomer is closed at once; once
    their handshake time has run out, a good client is served."""
    app = build_app(RegistryStore(tmp_path / "store", create=True), tmp_path / "incoming")
    tls = ServerCertificate(TlsFiles(pki.server.cert, pki.server.key))
    limits = dataclasses.replace(READ_LIMITS, head_timeout=8.0, connections=2)

    async def hold_then_knock(address: str) -> list[bool]:
        held = await stalled_handshakes(address, 2)
        await asyncio.sleep(0.3)  # both accepted
        knocks = [await closed_before(address, b"", seconds=3) for _ in range(3)]
        for reader, writer in held:  # closed by the server after their handshake time
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(reader.read(), 30)
            writer.close()
        return knocks

    with loop_thread() as run:
        server = RegistryServer(app, "127.0.0.1", 0, limits=limits, tls=tls)
        url = run(server.start())
        try:
            assert run(hold_then_knock(url.removeprefix("https://"))) == [True] * 3
            trust = ssl.create_default_context(cafile=pki.ca.cert)
            answer = httpx.get(f"{url}/api/v1/generation", verify=trust, timeout=10)
            assert answer.status_code == 200
        finally:
            run(server.stop())
