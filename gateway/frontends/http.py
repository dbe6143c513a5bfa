"""The HTTP front end: a raw ASGI app for V2 REST (JSON and binary), Triton's statistics
and model-repository extensions, and V1 predict.

A thin adapter: it routes, reads the body, decodes with the codecs, calls the one
`InferenceService`, encodes, and maps `InferenceError` codes to HTTP statuses in one table.
Each endpoint takes one method (`_METHOD`): another method on a known path is 405 with an
Allow header, a path that names no endpoint is 404.
It is a bare ASGI callable rather than a framework app because on a 2-core machine the
per-request cost of a framework's routing and request objects is a large share of the
serving budget (see docs/performance.md).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from modelgate.errorlog import log_refused, log_unexpected
from modelgate.gateway.codecs import v1, v2_http
from modelgate.gateway.core.access import CHALLENGE
from modelgate.gateway.core.admission import RETRY_AFTER_SECONDS
from modelgate.gateway.core.errors import ErrorCode, InferenceError
from modelgate.gateway.core.limits import ElementBudget
from modelgate.gateway.core.service import InferenceService
from modelgate.gateway.core.types import InferRequest
from modelgate.gateway.core.validation import timeout_seconds
from modelgate.gateway.frontends.http_wire import (
    MIN_COMPRESSED,
    Headers,
    HttpError,
    Receive,
    compress,
    int_header,
    read_body,
    response_coding,
)
from modelgate.gateway.settings import ServerSettings

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Answer = tuple[int, bytes, list[Any]]

STATUS_BY_CODE = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.RESOURCE_EXHAUSTED: 503,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.UNIMPLEMENTED: 501,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
}

_JSON = [(b"content-type", b"application/json")]
# Extra headers of an error answer, by code: a refusal under load says when to come back.
_HEADERS_BY_CODE = {
    ErrorCode.RESOURCE_EXHAUSTED: [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())],
    ErrorCode.UNAUTHENTICATED: [(b"www-authenticate", CHALLENGE.encode())],
}
TIMEOUT_HEADER = b"x-request-timeout-ms"
_HEADER_LENGTH = b"inference-header-content-length"

# Every endpoint, by what it does, with the one method it takes (405 for any other).
_METHOD = {
    "server": "GET",
    "live": "GET",
    "ready": "GET",
    "metadata": "GET",
    "model_ready": "GET",
    "config": "GET",
    "drift": "GET",
    "stats": "GET",
    "infer": "POST",
    "index": "POST",
    "load": "POST",
    "unload": "POST",
    "v1_status": "GET",
    "v1_predict": "POST",
}
# The endpoints that hold an admission place (core/admission.py) while they are served.
_INFERENCE = frozenset(("infer", "v1_predict"))
# Open to callers without a token (probes), when tokens are required.
_OPEN = frozenset(("live", "ready"))
# /v2/models/{m}[/versions/{v}]/<action> -> endpoint
_MODEL_ACTIONS = {
    "": "metadata",
    "ready": "model_ready",
    "config": "config",
    "drift": "drift",
    "stats": "stats",
    "infer": "infer",
}


class HttpFrontend:
    """The ASGI application; one per server, sharing the service with the gRPC front end."""

    def __init__(self, service: InferenceService, settings: ServerSettings) -> None:
        self._service = service
        self._max_body = settings.max_body_bytes
        self._max_json = settings.max_json_bytes
        self._max_elements = settings.max_request_elements
        self._max_strings = settings.max_request_strings
        self._routing_key = settings.routing_key_header.encode("latin-1")
        self._access = service.access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._handle(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: Headers = dict(scope["headers"])
        try:
            status, body, out = await self._route(scope, receive, headers)
            if len(body) >= MIN_COMPRESSED:
                coding = response_coding(headers)
                if coding is not None:
                    body = compress(body, coding)
                    out = [
                        *out,
                        (b"content-encoding", coding.encode()),
                        (b"vary", b"accept-encoding"),
                    ]
        except InferenceError as exc:
            status, body = STATUS_BY_CODE[exc.code], _error(exc.message)
            out = [*_JSON, *_HEADERS_BY_CODE.get(exc.code, ())]
            log_refused(log, scope["path"], status, exc.message)
        except HttpError as exc:
            status, body, out = exc.status, _error(exc.message), [*_JSON, *exc.headers]
            log_refused(log, scope["path"], status, exc.message)
        except Exception as exc:
            log_unexpected(log, scope["path"], exc)
            status, body, out = 500, _error("internal error"), _JSON
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body})

    async def _route(self, scope: Scope, receive: Receive, headers: Headers) -> Answer:
        path = scope["path"]
        endpoint, model, version = _endpoint(path)
        method = scope["method"]
        allowed = _METHOD[endpoint]
        if method != allowed:
            raise HttpError(
                405,
                f"method {method} is not allowed on {path} (use {allowed})",
                ((b"allow", allowed.encode()),),
            )
        if self._access is not None and endpoint not in _OPEN:
            # Before the body is read, like admission below; the server's own metadata
            # names no model, so any token reads it.
            if endpoint == "server":
                self._access.authenticate(headers.get(b"authorization"))
            else:
                self._access.check(headers.get(b"authorization"), model)
        if endpoint in _INFERENCE:
            assert model is not None
            # Before the body is read: a refused request costs no memory nor decoding.
            # uvicorn hands a connection's pipelined requests to the app one at a time
            # (it stops reading while one is in flight), so each is counted here too.
            admission = self._service.admission
            admission.enter()
            try:
                if endpoint == "infer":
                    return await self._infer(receive, headers, model, version)
                return await self._predict_v1(receive, headers, model)
            finally:
                admission.leave()
        service = self._service
        if endpoint == "index":
            body = await self._read_json(receive, headers)
            index = service.repository_index(v2_http.decode_index_request(body))
            return 200, v2_http.encode_json(v2_http.repository_index_json(index)), _JSON
        if endpoint in ("load", "unload"):
            assert model is not None
            service.change_repository(endpoint, model)
        if endpoint == "stats":
            stats = await service.statistics(model, version)
            return 200, v2_http.encode_json(v2_http.statistics_json(stats)), _JSON
        if endpoint == "drift":
            assert model is not None
            report = await service.drift_report(model, version)
            return 200, v2_http.encode_json(report), _JSON
        return self._get(endpoint, model, version)

    def _get(self, endpoint: str, model: str | None, version: str | None) -> Answer:
        service = self._service
        doc: Any
        if endpoint == "server":
            doc = {
                "name": service.name,
                "version": service.version,
                "extensions": list(service.extensions),
            }
        elif endpoint in ("live", "ready"):
            ok = service.live() if endpoint == "live" else service.ready()
            return (200 if ok else 503), b"", _JSON
        else:
            assert model is not None
            if endpoint == "model_ready":
                return (200 if service.model_ready(model, version) else 503), b"", _JSON
            if endpoint == "v1_status":
                doc = {"name": model, "ready": service.model_ready(model, None)}
            elif endpoint == "metadata":
                doc = v2_http.metadata_json(service.model_metadata(model, version))
            else:
                assert endpoint == "config", endpoint
                doc = v2_http.config_json(service.model_config(model, version))
        return 200, v2_http.encode_json(doc), _JSON

    async def _infer(
        self, receive: Receive, headers: Headers, model: str, version: str | None
    ) -> Answer:
        header_length = int_header(headers, _HEADER_LENGTH)
        if header_length is None:
            body = await self._read_json(receive, headers)
        else:  # JSON then binary tensors: the JSON part is held to the JSON limit alone
            if header_length > self._max_json:
                raise HttpError(
                    413,
                    f"JSON part of {header_length} bytes exceeds the limit of "
                    f"{self._max_json} (max_json_bytes)",
                )
            body = await read_body(receive, headers, self._max_body)
        request, encoding = v2_http.decode_infer_request(
            body, header_length, model, version, self._budget()
        )
        _apply_timeout_header(request, headers)
        self._apply_routing_key(request, headers)
        response = await self._service.infer(request)
        out, json_length = v2_http.encode_infer_response(response, encoding)
        if json_length is None:
            return 200, out, _JSON
        return (
            200,
            out,
            [
                (b"content-type", b"application/octet-stream"),
                (_HEADER_LENGTH, str(json_length).encode()),
            ],
        )

    async def _predict_v1(self, receive: Receive, headers: Headers, model: str) -> Answer:
        body = await self._read_json(receive, headers)
        inputs = self._service.model_metadata(model, None).inputs
        request = v1.decode_predict_request(body, model, None, inputs, self._budget())
        _apply_timeout_header(request, headers)
        self._apply_routing_key(request, headers)
        response = await self._service.infer(request)
        return 200, v1.encode_predict_response(response), _JSON

    def _budget(self) -> ElementBudget:
        return ElementBudget(self._max_elements, self._max_strings)

    async def _read_json(self, receive: Receive, headers: Headers) -> bytes:
        """A body that is all JSON: decoding it costs far more than its size in memory and
        time on the event loop, hence a limit of its own (docs/hardening.md)."""
        return await read_body(receive, headers, self._max_json, "max_json_bytes")

    def _apply_routing_key(self, request: InferRequest, headers: Headers) -> None:
        key = headers.get(self._routing_key)
        if key is not None:
            request.routing_key = key.decode("latin-1")


def is_inference(method: str, path: str) -> bool:
    """Whether a request is one that holds an admission place (V2 infer, V1 predict)."""
    if method != "POST":
        return False
    try:
        return _endpoint(path)[0] in _INFERENCE
    except HttpError:
        return False


# Clients call the same few paths again and again (one model's infer path), and each request
# is routed twice (admission in the connection protocol, then here): the routes of recent
# short paths are remembered. Bounded in count and in size (a client sending ever new or
# long paths only evicts them; 1,024 paths of a 64 KiB head each would pin 64 MiB).
REMEMBERED_PATH_CHARS = 256


def _endpoint(path: str) -> tuple[str, str | None, str | None]:
    """(endpoint, model, version) of a request path; 404 for a path that names none."""
    if len(path) > REMEMBERED_PATH_CHARS:
        return _route(path)
    return _remembered_route(path)


def _route(path: str) -> tuple[str, str | None, str | None]:
    parts = path.strip("/").split("/")
    n = len(parts)
    if parts[0] == "v2":
        if n == 1:
            return "server", None, None
        if parts[1] == "models":
            if n == 3 and parts[2] == "stats":  # Triton's path for every model's statistics
                return "stats", None, None
            model, version, action = _model_path(parts)
            endpoint = _MODEL_ACTIONS.get(action)
            if endpoint is not None:
                return endpoint, model, version
        elif parts[1] == "health" and n == 3 and parts[2] in ("live", "ready"):
            return parts[2], None, None
        elif parts[1] == "repository":
            if n == 3 and parts[2] == "index":
                return "index", None, None
            if n == 5 and parts[2] == "models" and parts[3] and parts[4] in ("load", "unload"):
                return parts[4], parts[3], None
    elif parts[0] == "v1" and n == 3 and parts[1] == "models":
        name, _, verb = parts[2].partition(":")
        if name and not verb:
            return "v1_status", name, None
        if name and verb == "predict":
            return "v1_predict", name, None
    raise HttpError(404, f"no such endpoint: {path}")


_remembered_route = functools.lru_cache(maxsize=1024)(_route)


def _model_path(parts: list[str]) -> tuple[str, str | None, str]:
    """(model, version, action) of /v2/models/{m}[/versions/{v}][/action]."""
    if len(parts) < 3 or not parts[2]:
        raise HttpError(404, f"no such endpoint: /{'/'.join(parts)}")
    model = parts[2]
    rest = parts[3:]
    version = None
    if rest[:1] == ["versions"]:
        if len(rest) < 2 or not rest[1]:
            raise HttpError(404, "missing version in path")
        version = rest[1]
        rest = rest[2:]
    if len(rest) > 1:
        raise HttpError(404, f"no such endpoint: /{'/'.join(parts)}")
    return model, version, rest[0] if rest else ""


def _apply_timeout_header(request: InferRequest, headers: Headers) -> None:
    """`x-request-timeout-ms` sets the deadline unless the body's `timeout` already did."""
    seconds = timeout_seconds(
        int_header(headers, TIMEOUT_HEADER), "milliseconds", "header x-request-timeout-ms"
    )
    if seconds is not None and (request.timeout is None or seconds < request.timeout):
        request.timeout = seconds


def _error(message: str) -> bytes:
    return v2_http.encode_json({"error": message})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
