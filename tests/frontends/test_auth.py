"""API tokens on a real gateway (`auth_tokens_file`): each API refuses a missing or wrong
token (401 / UNAUTHENTICATED) and a token of another model (403 / PERMISSION_DENIED) before
it reads or decodes the request; health checks stay open; metrics optionally need a token;
no secret shows in an answer or in the log."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from conftest import running
from modelgate.gateway.core.access import load_tokens
from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb
from modelgate.gateway.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from modelgate.gateway.server import Gateway
from modelgate.gateway.settings import ServerSettings
from modelgate.registry.store import RegistryStore

ADMIN = "admin-5e3f0c9d7a1b2c4e"  # every model
ECHO = "echo-9b8a7c6d5e4f3a2b"  # echo_fp32 only
WRONG = "not-a-token-0123456789"
SECRETS = (ADMIN, ECHO, WRONG)
X = np.arange(6, dtype=np.float32).reshape(2, 3)
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": X.tolist()}]}


def _bearer(secret: str | None) -> dict[str, str]:
    return {} if secret is None else {"authorization": f"Bearer {secret}"}


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"# ops\nadmin:{ADMIN}\n\necho-team:{ECHO}:echo_fp32\n")
    return path


@pytest.fixture
async def guarded(
    settings: ServerSettings, store: RegistryStore, tokens_file: Path
) -> AsyncIterator[Gateway]:
    guarded = dataclasses.replace(settings, auth_tokens_file=tokens_file, protect_metrics=True)
    async with running(guarded, store) as gateway:
        yield gateway


@pytest.fixture
def debug_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every record of the gateway's log, refusals (DEBUG) included."""
    caplog.set_level(logging.DEBUG, logger="modelgate")
    return caplog


# (method, path, model it concerns: the token for echo_fp32 may use it)
HTTP_APIS = [
    ("POST", "/v2/models/echo_fp32/infer", True),
    ("POST", "/v2/models/classifier/infer", False),
    ("POST", "/v1/models/classifier:predict", False),
    ("GET", "/v2/models/echo_fp32", True),
    ("GET", "/v2/models/classifier/config", False),
    ("GET", "/v2/models/classifier/ready", False),
    ("GET", "/v2/models/echo_fp32/drift", True),
    ("GET", "/v2/models/classifier/stats", False),
    ("GET", "/v2/models/stats", False),  # every model's statistics
    ("POST", "/v2/repository/index", False),
    ("POST", "/v2/repository/models/classifier/load", False),
]


async def test_http_refuses_missing_wrong_and_other_models_tokens_and_opens_health(
    guarded: Gateway, debug_log: pytest.LogCaptureFixture
) -> None:
    assert guarded.addresses is not None
    async with httpx.AsyncClient(base_url=f"http://{guarded.addresses.http}") as http:
        for method, path, echo_may in HTTP_APIS:
            for secret in (None, WRONG):
                r = await http.request(method, path, json=BODY, headers=_bearer(secret))
                assert r.status_code == 401, (path, r.text)
                assert r.headers["www-authenticate"] == 'Bearer realm="modelgate"'
                assert WRONG not in r.text
            r = await http.request(method, path, json=BODY, headers=_bearer(ECHO))
            assert r.status_code != 401 and (r.status_code == 403) != echo_may, (path, r.text)
            assert ECHO not in r.text and ECHO not in str(r.headers)
            r = await http.request(method, path, json=BODY, headers=_bearer(ADMIN))
            assert r.status_code not in (401, 403), (path, r.text)
        # Not a bearer token, or an empty one: 401 as well.
        for value in ("Basic YWRtaW46eA==", "Bearer", ADMIN):
            r = await http.get("/v2/models/echo_fp32", headers={"authorization": value})
            assert r.status_code == 401
        # Probes need no token; the server's own metadata takes any valid one.
        assert (await http.get("/v2/health/live")).status_code == 200
        assert (await http.get("/v2/health/ready")).status_code == 200
        assert (await http.get("/v2")).status_code == 401
        assert (await http.get("/v2", headers=_bearer(ECHO))).status_code == 200
        good = await http.post("/v2/models/echo_fp32/infer", json=BODY, headers=_bearer(ECHO))
        assert good.json()["outputs"][0]["data"] == X.ravel().tolist()
    for secret in SECRETS:
        assert secret not in debug_log.text


async def test_http_refuses_before_reading_the_body(guarded: Gateway) -> None:
    """A body far over max_json_bytes would be 413 once read: without a token it is 401."""
    assert guarded.addresses is not None
    too_big = b"[" * (guarded.settings.max_json_bytes + 1)
    async with httpx.AsyncClient(base_url=f"http://{guarded.addresses.http}") as http:
        for path in ("/v2/models/echo_fp32/infer", "/v1/models/echo_fp32:predict"):
            assert (await http.post(path, content=too_big)).status_code == 401
            r = await http.post(path, content=too_big, headers=_bearer(ECHO))
            assert r.status_code == 413


def _infer(model: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=X.shape)
    request.raw_input_contents.append(X.tobytes())
    return request


async def test_grpc_refuses_missing_wrong_and_other_models_tokens_and_opens_health(
    guarded: Gateway, debug_log: pytest.LogCaptureFixture
) -> None:
    assert guarded.addresses is not None
    async with grpc.aio.insecure_channel(guarded.addresses.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls = [
            (stub.ModelInfer, _infer("echo_fp32"), True),
            (stub.ModelInfer, _infer("classifier"), False),
            (stub.ModelMetadata, pb.ModelMetadataRequest(name="echo_fp32"), True),
            (stub.ModelConfig, pb.ModelConfigRequest(name="classifier"), False),
            (stub.ModelReady, pb.ModelReadyRequest(name="classifier"), False),
            (stub.ModelStatistics, pb.ModelStatisticsRequest(name="echo_fp32"), True),
            (stub.ModelStatistics, pb.ModelStatisticsRequest(), False),
            (stub.RepositoryIndex, pb.RepositoryIndexRequest(), False),
            (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="x"), False),
        ]
        for call, request, echo_may in calls:
            for secret in (None, WRONG):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(request, metadata=tuple(_bearer(secret).items()))
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, call
            code, details = grpc.StatusCode.OK, ""
            try:
                await call(request, metadata=tuple(_bearer(ECHO).items()))
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details() or ""
            assert (code == grpc.StatusCode.PERMISSION_DENIED) != echo_may, (call, code)
            assert ECHO not in details
            assert code != grpc.StatusCode.UNAUTHENTICATED
        # Probes need no token.
        assert (await stub.ServerLive(pb.ServerLiveRequest())).live
        assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ServerMetadata(pb.ServerMetadataRequest())
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        await stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=_bearer(ECHO).items())
        # Refused before decoding: a malformed message without a token is UNAUTHENTICATED.
        malformed = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await malformed(b"\xff\xff\xff")
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await malformed(b"\xff\xff\xff", metadata=tuple(_bearer(ECHO).items()))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        answer = await stub.ModelInfer(_infer("echo_fp32"), metadata=tuple(_bearer(ECHO).items()))
        assert (
            np.frombuffer(answer.raw_output_contents[0], np.float32).tolist() == X.ravel().tolist()
        )
    for secret in SECRETS:
        assert secret not in debug_log.text


async def test_protected_metrics_need_a_token_for_every_model(guarded: Gateway) -> None:
    assert guarded.addresses is not None
    url = f"http://{guarded.addresses.metrics}/metrics"
    async with httpx.AsyncClient() as http:
        for secret, status in ((None, 401), (WRONG, 401), (ECHO, 403), (ADMIN, 200)):
            r = await http.get(url, headers=_bearer(secret))
            assert r.status_code == status
        assert "modelgate_" in r.text
        for secret in SECRETS:
            assert secret not in r.text  # nor in any metric


def test_a_token_file_line_that_is_wrong_is_named_without_its_secret(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"admin:{ADMIN}\n{ECHO}\n")
    with pytest.raises(ValueError, match=r"line 2: expected name:secret") as refused:
        load_tokens(path)
    assert ECHO not in str(refused.value)
    path.write_text(f"a:{ADMIN}\nb:{ADMIN}:echo_fp32\n")
    with pytest.raises(ValueError, match="line 2: this secret is already listed"):
        load_tokens(path)
    path.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no tokens"):
        load_tokens(path)


async def test_grpc_streams_need_a_token_and_answer_other_models_with_an_error(
    guarded: Gateway,
) -> None:
    assert guarded.addresses is not None
    async with grpc.aio.insecure_channel(guarded.addresses.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for secret in (None, WRONG):
            call = stub.ModelStreamInfer(
                iter([_infer("echo_fp32")]), metadata=tuple(_bearer(secret).items()), timeout=30
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in call:
                    pass
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        mine, other = _infer("echo_fp32"), _infer("classifier")
        mine.id, other.id = "mine", "other"
        call = stub.ModelStreamInfer(
            iter([other, mine]), metadata=tuple(_bearer(ECHO).items()), timeout=30
        )
        answers = {a.infer_response.id: a async for a in call}
    assert "is not allowed model 'classifier'" in answers["other"].error_message
    assert ECHO not in answers["other"].error_message
    assert not answers["mine"].error_message
    got = np.frombuffer(answers["mine"].infer_response.raw_output_contents[0], np.float32)
    assert got.tolist() == X.ravel().tolist()


async def _statuses_until(
    gateway: Gateway, want: dict[str, tuple[int, str]], seconds: float = 30.0
) -> dict[str, tuple[int, str]]:
    """The HTTP status and gRPC code of an inference with each secret, asked again until
    they are `want` (or `seconds` have passed): the server looks at the file at most once a
    second."""
    assert gateway.addresses is not None
    url = f"http://{gateway.addresses.http}/v2/models/echo_fp32/infer"
    got: dict[str, tuple[int, str]] = {}
    async with (
        httpx.AsyncClient() as http,
        grpc.aio.insecure_channel(gateway.addresses.grpc) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(max(1, round(seconds / 0.2))):
            for secret in want:
                status = (await http.post(url, json=BODY, headers=_bearer(secret))).status_code
                code = grpc.StatusCode.OK
                try:
                    await stub.ModelInfer(
                        _infer("echo_fp32"), metadata=tuple(_bearer(secret).items())
                    )
                except grpc.aio.AioRpcError as exc:
                    code = exc.code()
                got[secret] = (status, code.name)
            if got == want:
                break
            await asyncio.sleep(0.2)
    return got


async def test_a_changed_token_file_is_taken_up_without_a_restart(
    guarded: Gateway, tokens_file: Path, debug_log: pytest.LogCaptureFixture
) -> None:
    new = "new-7f6e5d4c3b2a1908"
    ok, refused = (200, "OK"), (401, "UNAUTHENTICATED")
    assert await _statuses_until(guarded, {new: refused}, seconds=0) == {new: refused}
    # A token added: it works, on both protocols, and the others still do.
    tokens_file.write_text(f"admin:{ADMIN}\necho-team:{ECHO}:echo_fp32\nnew:{new}\n")
    want = {new: ok, ADMIN: ok, ECHO: ok}
    assert await _statuses_until(guarded, want) == want
    # A token removed: refused from then on.
    tokens_file.write_text(f"admin:{ADMIN}\nnew:{new}:echo_fp32\n")
    want = {new: ok, ADMIN: ok, ECHO: refused}
    assert await _statuses_until(guarded, want) == want
    # An invalid edit: one line in the log, and the last good tokens keep serving.
    debug_log.clear()
    tokens_file.write_text(f"admin:{ADMIN}\n{ECHO}\n")
    for _ in range(150):
        await _statuses_until(guarded, want, seconds=0)
        if "still using the previous tokens" in debug_log.text:
            break
        await asyncio.sleep(0.2)
    warnings = [
        r.getMessage()
        for r in debug_log.records
        if r.levelno >= logging.WARNING and r.name == "modelgate.watched"
    ]
    assert warnings == [
        f"auth_tokens_file {tokens_file}, line 2: expected name:secret or name:secret:model,model "
        "(secrets cannot contain ':'); still using the previous tokens"
    ]
    assert await _statuses_until(guarded, want, seconds=2) == want
    # The metrics port follows the same file.
    assert guarded.addresses is not None
    async with httpx.AsyncClient() as http:
        metrics = f"http://{guarded.addresses.metrics}/metrics"
        assert (await http.get(metrics, headers=_bearer(new))).status_code == 403
        assert (await http.get(metrics, headers=_bearer(ADMIN))).status_code == 200
    for secret in (*SECRETS, new):
        assert secret not in debug_log.text
