"""TLS on every port of a real gateway, with certificates the test makes (tests/certs.py):
HTTPS and gRPC with TLS, mutual TLS refusing missing, foreign and expired client
certificates, a plain-text client refused, and renewed certificate files taken up without
a restart."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from sync_clients import in_thread
from test_cli import LISTENING, Process

from certs import PARTIAL_CLIENT_HELLO, Pair, Pki, closed_before, stalled_handshakes
from conftest import running
from loadtest.procs import clean_environment
from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb
from modelgate.gateway.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from modelgate.gateway.security import Security
from modelgate.gateway.server import Gateway
from modelgate.gateway.settings import ServerSettings
from modelgate.registry.store import RegistryStore

X = np.arange(6, dtype=np.float32).reshape(2, 3)
WORKER_LISTENING = re.compile(r"modelgate worker listening .* metrics=(\S+)")
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": X.tolist()}]}


def _served(pki: Pki, folder: Path) -> Pair:
    """The server's certificate and key copied where a renewal can overwrite them."""
    folder.mkdir()
    live = Pair(folder / "tls.crt", folder / "tls.key")
    shutil.copy(pki.server.cert, live.cert)
    shutil.copy(pki.server.key, live.key)
    return live


@contextlib.asynccontextmanager
async def _tls_gateway(
    settings: ServerSettings, store: RegistryStore, live: Pair, client_ca: Path | None
) -> AsyncIterator[Gateway]:
    tls = dataclasses.replace(
        settings, tls_cert_file=live.cert, tls_key_file=live.key, tls_client_ca_file=client_ca
    )
    async with running(tls, store) as gateway:
        yield gateway


def _client_context(pki: Pki, client: Pair | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca.cert)
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    return context


async def _https_infer(gateway: Gateway, pki: Pki, client: Pair | None) -> int:
    assert gateway.addresses is not None
    url = f"https://{gateway.addresses.http}/v2/models/echo_fp32/infer"
    async with httpx.AsyncClient(verify=_client_context(pki, client)) as http:
        return (await http.post(url, json=BODY)).status_code


def _grpc_credentials(pki: Pki, client: Pair | None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert.read_bytes(),
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )


def _infer_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="echo_fp32")
    request.inputs.add(name="x", datatype="FP32", shape=X.shape)
    request.raw_input_contents.append(X.tobytes())
    return request


async def _grpc_infer(gateway: Gateway, credentials: grpc.ChannelCredentials | None) -> str:
    """The status name of a ModelInfer call ("OK" when answered)."""
    assert gateway.addresses is not None
    address = gateway.addresses.grpc
    if credentials is None:
        channel = grpc.aio.insecure_channel(address)
    else:
        channel = grpc.aio.secure_channel(address, credentials)
    async with channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            response = await stub.ModelInfer(_infer_request(), timeout=10)
        except grpc.aio.AioRpcError as exc:
            return str(exc.code().name)
    assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == X.ravel().tolist()
    return "OK"


async def test_https_and_grpc_with_tls_serve_and_plain_text_is_refused(
    settings: ServerSettings, store: RegistryStore, pki: Pki, tmp_path: Path
) -> None:
    live = _served(pki, tmp_path / "live")
    async with _tls_gateway(settings, store, live, None) as gateway:
        assert gateway.addresses is not None
        assert await _https_infer(gateway, pki, None) == 200
        assert await _grpc_infer(gateway, _grpc_credentials(pki, None)) == "OK"
        # Plain text against the TLS ports: no answer but a closed connection / UNAVAILABLE.
        async with httpx.AsyncClient() as plain:
            with pytest.raises(httpx.TransportError):
                await plain.get(f"http://{gateway.addresses.http}/v2/health/live")
        assert await _grpc_infer(gateway, None) == "UNAVAILABLE"
        # The metrics port serves the same certificate.
        async with httpx.AsyncClient(verify=_client_context(pki, None)) as http:
            metrics = await http.get(f"https://{gateway.addresses.metrics}/metrics")
        assert metrics.status_code == 200 and "modelgate_" in metrics.text
        # And the server still serves TLS clients after the plain ones.
        assert await _https_infer(gateway, pki, None) == 200


@pytest.mark.parametrize("grpc_workers", ["shared", "thread"])
async def test_mutual_tls_refuses_missing_foreign_and_expired_client_certificates(
    settings: ServerSettings, store: RegistryStore, pki: Pki, tmp_path: Path, grpc_workers: str
) -> None:
    live = _served(pki, tmp_path / "live")
    settings = dataclasses.replace(settings, grpc_workers=grpc_workers)
    async with _tls_gateway(settings, store, live, pki.ca.cert) as gateway:
        assert await _https_infer(gateway, pki, pki.client) == 200
        assert await _grpc_infer(gateway, _grpc_credentials(pki, pki.client)) == "OK"
        for client in (None, pki.stranger, pki.expired_client):
            with pytest.raises(httpx.TransportError):
                await _https_infer(gateway, pki, client)
            assert await _grpc_infer(gateway, _grpc_credentials(pki, client)) == "UNAVAILABLE"
        # Metrics ask for no client certificate.
        assert gateway.addresses is not None
        async with httpx.AsyncClient(verify=_client_context(pki, None)) as http:
            assert (await http.get(f"https://{gateway.addresses.metrics}/metrics")).is_success
        assert await _https_infer(gateway, pki, pki.client) == 200


async def test_triton_clients_over_tls(
    settings: ServerSettings, store: RegistryStore, pki: Pki, tmp_path: Path
) -> None:
    live = _served(pki, tmp_path / "live")
    async with _tls_gateway(settings, store, live, pki.ca.cert) as gateway:
        assert gateway.addresses is not None
        addresses = gateway.addresses

        def call() -> tuple[np.ndarray, np.ndarray]:
            grpc_client = triton_grpc.InferenceServerClient(
                addresses.grpc,
                ssl=True,
                root_certificates=str(pki.ca.cert),
                private_key=str(pki.client.key),
                certificate_chain=str(pki.client.cert),
            )
            http_client = triton_http.InferenceServerClient(
                addresses.http,
                ssl=True,
                ssl_context_factory=lambda: _client_context(pki, pki.client),
            )
            try:
                answers = []
                for client, module in ((grpc_client, triton_grpc), (http_client, triton_http)):
                    assert client.is_server_ready()
                    tensor = module.InferInput("x", list(X.shape), "FP32")
                    tensor.set_data_from_numpy(X)
                    answers.append(client.infer("echo_fp32", [tensor]).as_numpy("y"))
                return answers[0], answers[1]
            finally:
                grpc_client.close()
                http_client.close()

        by_grpc, by_http = await in_thread(call)
    np.testing.assert_array_equal(by_grpc, X)
    np.testing.assert_array_equal(by_http, X)


async def _peer_certificates(gateway: Gateway, pki: Pki) -> tuple[bytes, bytes, bytes]:
    """The certificate (DER) a new connection to each port is served: HTTP, gRPC, metrics."""
    assert gateway.addresses is not None
    found = []
    for address in (gateway.addresses.http, gateway.addresses.grpc, gateway.addresses.metrics):
        host, port = address.rsplit(":", 1)
        context = _client_context(pki, pki.client)
        if address == gateway.addresses.grpc:
            context.set_alpn_protocols(["h2"])  # gRPC refuses a handshake without it
        _, writer = await asyncio.open_connection(host, int(port), ssl=context)
        ssl_object = writer.get_extra_info("ssl_object")
        found.append(ssl_object.getpeercert(binary_form=True))
        writer.close()
    return found[0], found[1], found[2]


async def test_renewed_certificate_files_are_taken_up_without_a_restart(
    settings: ServerSettings,
    store: RegistryStore,
    pki: Pki,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    live = _served(pki, tmp_path / "live")
    async with _tls_gateway(settings, store, live, pki.ca.cert) as gateway:
        first = await _peer_certificates(gateway, pki)
        assert (
            first[0]
            == first[1]
            == first[2]
            == ssl.PEM_cert_to_DER_cert(pki.server.cert_pem.decode())
        )
        # A half-written renewal (a new key beside the old certificate) is not taken up:
        # the old certificate keeps serving, and the log says why.
        renewed = pki.ca.issue("renewed-server")
        with caplog.at_level(logging.WARNING, logger="modelgate"):
            shutil.copy(renewed.key, live.key)
            for _ in range(100):
                if "does not match" in caplog.text:
                    break
                assert await _peer_certificates(gateway, pki) == first
                await asyncio.sleep(0.1)
        assert "still serving the previous certificate" in caplog.text
        assert await _https_infer(gateway, pki, pki.client) == 200
        # Then the certificate arrives: new connections on every port get it.
        shutil.copy(renewed.cert, live.cert)
        want = ssl.PEM_cert_to_DER_cert(renewed.cert_pem.decode())
        for _ in range(100):
            now = await _peer_certificates(gateway, pki)
            if now == (want, want, want):
                break
            await asyncio.sleep(0.1)
        assert now == (want, want, want)
        assert await _https_infer(gateway, pki, pki.client) == 200
        assert await _grpc_infer(gateway, _grpc_credentials(pki, pki.client)) == "OK"


async def test_a_handshake_that_never_completes_is_closed_after_the_header_timeout(
    settings: ServerSettings, store: RegistryStore, pki: Pki, tmp_path: Path
) -> None:
    """asyncio's own handshake timeout is 60 s: a silent client (or one that stops in the
    middle of its ClientHello) is closed within `header_timeout` on every port instead."""
    quick = dataclasses.replace(settings, header_timeout=0.5)
    async with _tls_gateway(quick, store, _served(pki, tmp_path / "live"), None) as gateway:
        assert gateway.addresses is not None
        ports = (gateway.addresses.http, gateway.addresses.metrics, gateway.addresses.grpc)
        stalled = [
            closed_before(address, sent, seconds=20)
            for address in ports
            for sent in (b"", PARTIAL_CLIENT_HELLO)
        ]
        assert await asyncio.gather(*stalled) == [True] * 6
        assert await _https_infer(gateway, pki, None) == 200  # and the server still serves


async def test_handshakes_under_way_count_toward_max_connections(
    settings: ServerSettings, store: RegistryStore, pki: Pki, tmp_path: Path
) -> None:
    """Silent TLS clients cannot hold more than `max_connections` sockets (the metrics
    port's 32): one beyond the limit is closed at once, not after its own handshake timeout;
    once theirs run out, a good client is served."""
    limited = dataclasses.replace(settings, max_connections=3, header_timeout=8.0)
    async with _tls_gateway(limited, store, _served(pki, tmp_path / "live"), None) as gateway:
        assert gateway.addresses is not None
        address, metrics = gateway.addresses.http, gateway.addresses.metrics
        held = await stalled_handshakes(address, 3) + await stalled_handshakes(metrics, 32)
        await asyncio.sleep(0.3)  # all accepted
        for _ in range(3):  # each newcomer is closed at once while the others are held
            assert await closed_before(address, b"", seconds=3)
            assert await closed_before(address, PARTIAL_CLIENT_HELLO, seconds=3)
            assert await closed_before(metrics, b"", seconds=3)
        for reader, writer in held:  # the held ones are closed after their handshake time
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(), 30) == b""
            writer.close()
        assert await _https_infer(gateway, pki, None) == 200


def test_certificate_files_that_cannot_serve_stop_startup_with_one_line(
    settings: ServerSettings, store: RegistryStore, pki: Pki, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    server, other = pki.server, pki.client
    cases = {
        "No such file": [tmp_path / "missing.crt", server.key, None],
        "tls_cert_file is set but tls_key_file is not": [server.cert, None, None],
        "tls_client_ca_file (mutual TLS) needs TLS": [None, None, pki.ca.cert],
        "no PEM certificate in it": [garbage, server.key, None],
        "not an unencrypted PEM private key": [server.cert, garbage, None],
        "tls_client_ca_file": [server.cert, server.key, garbage],
    }
    for expected, (cert, key, ca) in cases.items():
        wrong = dataclasses.replace(
            settings, tls_cert_file=cert, tls_key_file=key, tls_client_ca_file=ca
        )
        with pytest.raises(ValueError) as refused:
            Security.of(wrong)
        assert expected in str(refused.value) and "\n" not in str(refused.value)
    # And as `modelgate serve` says it: one line, status 2.
    done = subprocess.run(
        [sys.executable, "-m", "modelgate", "serve", "--store", str(store.root),
         "--tls-cert-file", str(server.cert), "--tls-key-file", str(other.key),
         "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"],
        capture_output=True, text=True, timeout=120, env=clean_environment(),
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        f"modelgate: the key in tls_key_file {other.key} does not match the certificate in "
        f"tls_cert_file {server.cert}: give the key the certificate was issued for\n"
    )


async def test_workers_serve_tls_and_tokens_and_so_do_their_merged_metrics(
    store: RegistryStore, pki: Pki, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("ops:s3cret-for-every-model\n")
    process = Process(
        ["serve", "--store", str(store.root), "--http-port", "0", "--grpc-port", "0",
         "--metrics-port", "0", "--workers", "2", "--drain-delay", "0",
         "--tls-cert-file", str(pki.server.cert), "--tls-key-file", str(pki.server.key),
         "--auth-tokens-file", str(tokens), "--protect-metrics", "on"], tmp_path,
    )  # fmt: skip
    try:
        http_address, _, metrics_address = process.wait_for(LISTENING).groups()
        token = {"authorization": "Bearer s3cret-for-every-model"}
        url = f"https://{http_address}/v2/models/echo_fp32/infer"
        async with httpx.AsyncClient(verify=_client_context(pki, None)) as http:
            for _ in range(600):  # until a worker has loaded the model
                if (await http.post(url, json=BODY, headers=token)).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            assert (await http.post(url, json=BODY, headers=token)).status_code == 200
            assert (await http.post(url, json=BODY)).status_code == 401
            metrics = f"https://{metrics_address}/metrics"
            assert (await http.get(metrics)).status_code == 401
            merged = await http.get(metrics, headers=token)
            assert merged.status_code == 200 and "modelgate_requests_total" in merged.text
        # Each worker's own metrics, which the supervisor merges, listen on loopback only.
        workers = [m for m in map(WORKER_LISTENING.search, process.output) if m]
        assert workers and all(m.group(1).startswith("127.0.0.1:") for m in workers)
    finally:
        process.close()
