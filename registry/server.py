"""The registry over HTTP/JSON (`modelgate registry serve`), for gateways on other machines.

Gateways pull with `modelgate serve --registry http://host:port` (registry/remote.py). All
paths are under /api/v1; names and versions are path segments, percent-encoded by clients.

    GET  /generation                               {"generation": "..."}
    GET  /models[?name=N]                          {"versions": [ModelVersion...]}
    GET  /models/{name}/versions                   {"versions": [ModelVersion...]} of one model
    GET  /models/{name}/versions/{v}               ModelVersion
    GET  /history[?name=N]                         {"transitions": [Transition...]}, oldest first
    GET  /artifacts/{sha256}                       the model bytes (application/octet-stream)
    HEAD /artifacts/{sha256}                       200 if registered or uploaded, else 404
    PUT  /artifacts/{sha256}        write          body = the model bytes; 201 {"sha256", "size"}
    POST /models/{name}/versions    write          {"sha256", "stage", "traffic", "description",
                                                    "tags", "reference", "actor", "reason",
                                                    "allow_signature_change"} -> 201 version
    POST /models/{name}/versions/{v}/transition  write
                                                   {"stage", "traffic", "keep", "reason",
                                                    "actor", "allow_signature_change"}
                                                   -> 200 version

Registering is two requests: PUT the artifact (the server refuses a body whose sha256
differs from the path's), then POST the version naming that sha256. An uploaded artifact
waits in the server's own `.incoming-*` folder in the store directory until a version is
registered from it, or until it is `--upload-ttl` seconds old (registry/uploads.py); the
folder goes when the server stops. Registering a file the registry already holds needs no
upload (HEAD tells).

Authentication is a bearer token from `--token-file` (registry/access.py: one `name:secret
[scope ...]` or bare `secret` a line; scopes `admin`, `write[:PATTERN]`, `read[:PATTERN]`
with PATTERN a model name, a prefix ending in `*`, or `*`; no scope means admin), taken up
again when the file changes (modelgate/tokens.py). Writes always need one; without a token
file the registry is read-only. `--protect-reads` needs one for reads too, and then listings
hold only the models the token may read.
The audit actor of a write is the token's name; a client's `actor` field, when it names
someone else, is recorded as "token-name (on behalf of actor)": the token is who
authenticated, the rest is what that caller claims.

Errors are `{"error": "..."}` with: 400 invalid request, bad JSON or sha256, unknown field;
401 no token / 403 wrong token, a token without the scope (`error="insufficient_scope"`)
or a read-only registry (all with `WWW-Authenticate: Bearer`);
404 unknown model, version, artifact or endpoint; 405 wrong method; 409 conflict with the
registry's state; 413 body over the limit (1 GiB artifacts, 1 MiB JSON); 502 a stored
artifact that no longer matches its sha256; 503 the store is unavailable. A registry error
also has a stable `"code"` (errors.py): `invalid_request`, `invalid_model` (400, not an ONNX
model the gateway can serve), `not_found`, `conflict`, `auth`, `artifact_integrity`,
`unavailable`, and `signature_mismatch` (409: a version's inputs or outputs differ from the
production version's; `allow_signature_change` with a `reason` allows it).

Connections are bounded (`READ_LIMITS`, modelgate/http_limits.py): 431/408 for a head over
64 KiB or not complete within 10 s, 408 for a body not complete within 10 minutes, and
beyond 256 connections the one idle the longest is closed (503 for a newcomer when none is).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import re
import signal
import tempfile
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, unquote

import orjson
import uvicorn

from modelgate.errorlog import log_unexpected
from modelgate.http_limits import (
    BoundedHttpProtocol,
    LoopServer,
    ReadLimits,
    bounded,
    start_serving,
)
from modelgate.listen import address, listen
from modelgate.registry.access import Access, AccessError, Action, ApiToken, load_tokens
from modelgate.registry.artifacts import file_sha256
from modelgate.registry.client import RegistryClient
from modelgate.registry.errors import (
    ArtifactIntegrityError,
    AuthError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    RegistryError,
    UnavailableError,
)
from modelgate.registry.signature import InvalidModelError
from modelgate.registry.types import ModelVersion, Stage, check_model_name, parse_version
from modelgate.registry.uploads import INCOMING_PREFIX, incoming_folders, sweep_uploads
from modelgate.tls import ServerCertificate, TlsFiles
from modelgate.tokens import TokenFile, TokenTable

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Response = tuple[int, bytes, list[tuple[bytes, bytes]]]

MAX_ARTIFACT_BYTES = 1 << 30
MAX_JSON_BYTES = 1 << 20
UPLOAD_TTL = 3600.0
_SWEEP_PERIOD_MAX = 60.0
# Connections: heads as the gateway's defaults; a body gets ten minutes (a 1 GiB artifact
# at under 2 MB/s); few clients (gateways polling, CI registering), so a few hundred places.
READ_LIMITS = ReadLimits(
    head_bytes=64 * 1024, head_timeout=10.0, body_timeout=600.0, connections=256
)

# Most specific first: the first class an error is an instance of decides its status.
STATUS_BY_ERROR: tuple[tuple[type[Exception], int], ...] = (
    (InvalidRequestError, 400),
    (InvalidModelError, 400),
    (AuthError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (ArtifactIntegrityError, 502),
    (UnavailableError, 503),
    (RegistryError, 500),
)

_JSON = [(b"content-type", b"application/json")]
_OCTETS = [(b"content-type", b"application/octet-stream")]
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Uploads reach the disk in slices this big, each written (and hashed) in a worker thread.
_WRITE_SLICE = 4 << 20


class HttpError(Exception):
    """An error only HTTP has (401, 405, 413 ...): status, message and extra headers."""

    def __init__(
        self, status: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)


# --- the application ----------------------------------------------------------------------


class RegistryApp:
    """The ASGI application serving one `RegistryClient` (usually the embedded store)."""

    def __init__(
        self,
        registry: RegistryClient,
        incoming: Path,
        access: Access,
        *,
        max_artifact_bytes: int = MAX_ARTIFACT_BYTES,
        max_json_bytes: int = MAX_JSON_BYTES,
        upload_ttl: float = UPLOAD_TTL,
    ) -> None:
        self._registry = registry
        self._incoming = incoming
        self._access = access
        self._max_artifact = max_artifact_bytes
        self._max_json = max_json_bytes
        self.upload_ttl = upload_ttl

    async def sweep_uploads(self) -> None:
        """Delete this app's uploads older than the upload TTL, periodically, until
        cancelled (registry/uploads.py)."""
        while True:
            await asyncio.sleep(min(max(self.upload_ttl / 4, 0.05), _SWEEP_PERIOD_MAX))
            try:
                await asyncio.to_thread(sweep_uploads, [self._incoming], self.upload_ttl)
            except OSError as exc:  # a full or failing disk must not stop the sweeps
                log.warning("sweeping expired uploads failed: %s", exc)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Only HTTP: the app has nothing to start or stop (uvicorn runs with lifespan off).
        if scope["type"] == "http":
            await self._handle(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            status, body, headers = await self._route(scope, receive)
        except HttpError as exc:
            status, body, headers = exc.status, _error(exc.message), _JSON + exc.headers
        except AccessError as exc:
            status, body = exc.status, _error(exc.message)
            headers = [*_JSON, (b"www-authenticate", exc.challenge)]
        except RegistryError as exc:
            status, body, headers = _status_of(exc), _error(str(exc), exc.code), _JSON
        except InvalidModelError as exc:
            status, body, headers = _status_of(exc), _error(str(exc), "invalid_model"), _JSON
        except Exception as exc:
            log_unexpected(log, f"{scope['method']} {scope['path']}", exc)
            status, body, headers = 500, _error("internal error"), _JSON
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )

    async def _route(self, scope: Scope, receive: Receive) -> Response:
        method: str = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        # Split before decoding, so an encoded "/" in a name cannot change the route.
        parts = [unquote(p) for p in raw_path.decode("latin-1").strip("/").split("/")]
        if parts[:2] != ["api", "v1"] or len(parts) < 3:
            raise HttpError(404, f"no such endpoint: {method} {scope['path']}")
        parts = parts[2:]
        headers = dict(scope["headers"])
        query = parse_qs(scope["query_string"].decode("latin-1"))
        write = method in ("PUT", "POST")
        allowed = _allowed_methods(parts)
        if not allowed:
            raise HttpError(404, f"no such endpoint: {method} {scope['path']}")
        if method not in allowed:
            raise HttpError(
                405,
                f"method {method} not allowed on {scope['path']} (allowed: {', '.join(allowed)})",
                [(b"allow", ", ".join(allowed).encode())],
            )
        caller = self._access.caller(headers.get(b"authorization"), write=write)
        # The model a request is about, if it is about one: its scope decides.
        model = parts[1] if parts[0] == "models" and len(parts) >= 3 else None
        if write:
            assert caller is not None
            Access.require(caller, Action.WRITE, model)  # uploads: any write scope
            if parts[0] == "artifacts":
                return await self._put_artifact(receive, headers, _sha256(parts[1]))
            assert model is not None
            body = await self._read_json(receive, headers)
            if len(parts) == 3:
                return await self._register(model, body, caller.name)
            return await self._transition(model, parse_version(parts[3]), body, caller.name)
        Access.require(caller, Action.READ, model)
        return await self._read(method, parts, query, caller)

    # --- reads ----------------------------------------------------------------------------

    async def _read(
        self,
        method: str,
        parts: list[str],
        query: dict[str, list[str]],
        caller: ApiToken | None,
    ) -> Response:
        """A read; listings hold only the models `caller` may read."""
        registry = self._registry
        head = parts[0]
        if head == "generation":
            generation = await asyncio.to_thread(registry.generation)
            return _json(200, {"generation": generation})
        if head == "history":
            transitions = await asyncio.to_thread(registry.history, _name_param(query))
            visible = [t.to_json() for t in transitions if Access.readable(caller, t.name)]
            return _json(200, {"transitions": visible})
        if head == "artifacts":
            sha = _sha256(parts[1])
            if method == "HEAD":
                return await self._head_artifact(sha, caller)
            version = await self._version_with(sha, caller)
            data = await asyncio.to_thread(registry.read_artifact, version)
            return 200, data, _OCTETS
        if len(parts) == 1:
            versions = await asyncio.to_thread(registry.list_versions, _name_param(query))
            listed = [v.to_json() for v in versions if Access.readable(caller, v.name)]
            return _json(200, {"versions": listed})
        if len(parts) == 3:
            versions = await asyncio.to_thread(registry.list_versions, parts[1])
            if not versions:
                raise NotFoundError(f"unknown model {parts[1]!r}")
            return _json(200, {"versions": [v.to_json() for v in versions]})
        version = await asyncio.to_thread(registry.get, parts[1], parse_version(parts[3]))
        return _json(200, version.to_json())

    async def _version_with(self, sha: str, caller: ApiToken | None = None) -> ModelVersion:
        """A version (of a model `caller` may read) whose artifact is `sha`."""
        versions = await asyncio.to_thread(self._registry.list_versions, None)
        for version in versions:
            if version.sha256 == sha and Access.readable(caller, version.name):
                return version
        raise NotFoundError(f"no registered version has the artifact {sha}")

    async def _head_artifact(self, sha: str, caller: ApiToken | None) -> Response:
        staged = await asyncio.to_thread((self._incoming / sha).is_file)
        if not staged:
            await self._version_with(sha, caller)
        return 200, b"", _OCTETS

    # --- writes ---------------------------------------------------------------------------

    async def _put_artifact(
        self, receive: Receive, headers: dict[bytes, bytes], sha: str
    ) -> Response:
        declared = _content_length(headers)
        if declared is not None and declared > self._max_artifact:
            raise HttpError(
                413, f"artifact of {declared} bytes exceeds the limit of {self._max_artifact}"
            )
        await asyncio.to_thread(self._incoming.mkdir, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._incoming, prefix=".tmp-")
        try:
            hasher = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as file:
                pending: list[bytes] = []
                pending_size = 0
                more = True
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise HttpError(400, "the client went away during the upload")
                    chunk: bytes = message.get("body", b"")
                    more = bool(message.get("more_body"))
                    size += len(chunk)
                    if size > self._max_artifact:
                        raise HttpError(
                            413, f"artifact exceeds the limit of {self._max_artifact} bytes"
                        )
                    pending.append(chunk)
                    pending_size += len(chunk)
                    if pending_size >= _WRITE_SLICE or not more:
                        await asyncio.to_thread(_write_slice, file, hasher, pending, not more)
                        pending, pending_size = [], 0
            actual = hasher.hexdigest()
            if actual != sha:
                raise HttpError(400, f"the body's sha256 is {actual}, not the {sha} of the path")
            try:
                await asyncio.to_thread(os.replace, tmp, self._incoming / sha)
            except FileNotFoundError:  # swept: no write for longer than the upload TTL
                raise HttpError(408, "the upload stalled longer than the upload TTL") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return _json(201, {"sha256": sha, "size": size})

    async def _register(self, name: str, body: dict[str, Any], caller: str) -> Response:
        check_model_name(name)  # before reading the artifact it would be registered from
        fields = _fields(
            body,
            sha256=(str, None),
            stage=(str, "none"),
            traffic=((int, float, type(None)), None),
            description=(str, ""),
            tags=(dict, {}),
            reference=((dict, type(None)), None),
            actor=(str, ""),
            reason=(str, ""),
            allow_signature_change=(bool, False),
        )
        if fields["sha256"] is None:
            raise InvalidRequestError("'sha256' is required: the artifact uploaded before")
        sha = _sha256(fields["sha256"])
        tags = fields["tags"]
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
            raise InvalidRequestError("'tags' must map strings to strings")
        stage = _stage(fields["stage"])
        register = functools.partial(
            self._registry.register,
            name,
            stage=stage,
            traffic=_traffic(fields["traffic"]),
            description=fields["description"],
            tags=tags,
            reference=fields["reference"],
            actor=_actor(caller, fields["actor"]),
            reason=fields["reason"],
            allow_signature_change=fields["allow_signature_change"],
        )
        try:
            version = await asyncio.to_thread(register, await self._artifact_source(sha))
        except FileNotFoundError:
            # A concurrent registration of the same artifact was done first and took the
            # upload away: the artifact is registered now, so register from the stored copy.
            version = await asyncio.to_thread(register, await self._artifact_source(sha))
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, self._incoming / sha)
        log.info("registered %s v%d (%s) by %s", name, version.version, stage.value, caller)
        return _json(201, version.to_json())

    async def _artifact_source(self, sha: str) -> bytes | Path:
        """An uploaded artifact's path (the registry reads it in slices, never whole), or a
        registered artifact's bytes (registering the same file again)."""
        upload = self._incoming / sha
        try:
            actual = await asyncio.to_thread(file_sha256, upload)
        except FileNotFoundError:
            try:
                version = await self._version_with(sha)
            except NotFoundError:
                raise NotFoundError(
                    f"artifact {sha} has not been uploaded: PUT /api/v1/artifacts/{sha} first"
                ) from None
            return await asyncio.to_thread(self._registry.read_artifact, version)
        if actual != sha:
            raise ArtifactIntegrityError(f"uploaded artifact {sha} changed on the server's disk")
        return upload

    async def _transition(
        self, name: str, number: int, body: dict[str, Any], caller: str
    ) -> Response:
        fields = _fields(
            body,
            stage=(str, None),
            traffic=((int, float, type(None)), None),
            keep=(bool, False),
            reason=(str, ""),
            actor=(str, ""),
            allow_signature_change=(bool, False),
        )
        if fields["stage"] is None:
            raise InvalidRequestError("'stage' is required")
        stage = _stage(fields["stage"])
        version = await asyncio.to_thread(
            self._registry.transition,
            name,
            number,
            stage,
            traffic=_traffic(fields["traffic"]),
            actor=_actor(caller, fields["actor"]),
            reason=fields["reason"],
            keep=fields["keep"],
            allow_signature_change=fields["allow_signature_change"],
        )
        log.info("moved %s v%d to %s by %s", name, number, stage.value, caller)
        return _json(200, version.to_json())

    async def _read_json(self, receive: Receive, headers: dict[bytes, bytes]) -> dict[str, Any]:
        declared = _content_length(headers)
        if declared is not None and declared > self._max_json:
            raise HttpError(413, f"body of {declared} bytes exceeds the limit of {self._max_json}")
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            chunk: bytes = message.get("body", b"")
            more = bool(message.get("more_body"))
            size += len(chunk)
            if size > self._max_json:
                raise HttpError(413, f"body exceeds the limit of {self._max_json} bytes")
            chunks.append(chunk)
        try:
            body = orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError as exc:
            raise InvalidRequestError(f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidRequestError("the body must be a JSON object")
        return body


def build_app(
    registry: RegistryClient,
    incoming: Path,
    *,
    tokens: TokenTable[ApiToken] | Sequence[ApiToken] = (),
    protect_reads: bool = False,
    max_artifact_bytes: int = MAX_ARTIFACT_BYTES,
    max_json_bytes: int = MAX_JSON_BYTES,
    upload_ttl: float = UPLOAD_TTL,
) -> RegistryApp:
    """The ASGI app serving `registry`; uploads wait in `incoming` until registered, or
    until they are `upload_ttl` seconds old. `tokens`: a `TokenFile` follows its file."""
    return RegistryApp(
        registry,
        incoming,
        Access(tokens, protect_reads=protect_reads),
        max_artifact_bytes=max_artifact_bytes,
        max_json_bytes=max_json_bytes,
        upload_ttl=upload_ttl,
    )


# --- routing and field helpers --------------------------------------------------------------


def _allowed_methods(parts: list[str]) -> tuple[str, ...]:
    """The methods of the endpoint at `parts` (below /api/v1); () when there is none."""
    n, head = len(parts), parts[0]
    if n == 1 and head in ("generation", "models", "history"):
        return ("GET",)
    if head == "artifacts" and n == 2:
        return ("GET", "HEAD", "PUT")
    if head == "models" and n >= 3 and parts[1] and parts[2] == "versions":
        if n == 3:
            return ("GET", "POST")
        if n == 4:
            return ("GET",)
        if n == 5 and parts[4] == "transition":
            return ("POST",)
    return ()


# What a client's JSON value is, in its terms. Error messages name a wrong value's type and
# never format the value: it may be megabytes long, or nested deeper than repr can go.
_JSON_TYPES: dict[type, str] = {
    dict: "an object",
    list: "a list",
    str: "a string",
    bool: "true or false",
    int: "a number",
    float: "a number",
    type(None): "null",
}
_SHOWN_CHARS = 80  # of a name or path segment quoted back in an error message


def _fields(body: dict[str, Any], **spec: tuple[Any, Any]) -> dict[str, Any]:
    """`body`'s fields, each checked against its (type, default); unknown fields refused."""
    unknown = sorted(set(body) - set(spec))
    if unknown:
        shown = ", ".join(repr(key[:_SHOWN_CHARS]) for key in unknown[:3])
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise InvalidRequestError(f"unknown field(s) {shown}{more} (known: {', '.join(spec)})")
    out: dict[str, Any] = {}
    for key, (kind, default) in spec.items():
        value = body.get(key, default)
        # bool is an int to Python but not a number to a JSON client.
        if value is not default and (
            not isinstance(value, kind) or _is_bool_for_number(value, kind)
        ):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            expected = " or ".join(dict.fromkeys(_JSON_TYPES[k] for k in kinds))
            raise InvalidRequestError(
                f"field {key!r} has the wrong type: {expected} expected, not "
                f"{_JSON_TYPES.get(type(value), type(value).__name__)}"
            )
        out[key] = value
    return out


def _is_bool_for_number(value: Any, kind: Any) -> bool:
    return isinstance(value, bool) and kind is not bool


def _sha256(value: str) -> str:
    if not _SHA256.fullmatch(value):
        raise InvalidRequestError(
            f"not a sha256 (64 lowercase hex digits): {value[:_SHOWN_CHARS]!r}"
        )
    return value


def _stage(value: str) -> Stage:
    try:
        return Stage.parse(value)
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from None


def _traffic(value: float | None) -> float | None:
    return None if value is None else float(value)


def _name_param(query: dict[str, list[str]]) -> str | None:
    names = query.get("name")
    return names[-1] if names else None


def _actor(caller: str, claimed: str) -> str:
    """The audit actor: the token's name, plus whom the caller says it acts for."""
    claimed = claimed.strip()
    if not claimed or claimed == caller:
        return caller
    return f"{caller} (on behalf of {claimed})"


def _content_length(headers: dict[bytes, bytes]) -> int | None:
    value = headers.get(b"content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise HttpError(400, "content-length must be an integer") from None


def _status_of(exc: Exception) -> int:
    for kind, status in STATUS_BY_ERROR:
        if isinstance(exc, kind):
            return status
    return 500


def _write_slice(file: IO[bytes], hasher: Any, chunks: list[bytes], last: bool) -> None:
    for chunk in chunks:
        hasher.update(chunk)
        file.write(chunk)
    if last:
        file.flush()
        os.fsync(file.fileno())


def _json(status: int, document: dict[str, Any]) -> Response:
    return status, orjson.dumps(document), _JSON


def _error(message: str, code: str | None = None) -> bytes:
    return orjson.dumps({"error": message} if code is None else {"error": message, "code": code})


# --- the server process -------------------------------------------------------------------


class RegistryServer:
    """A registry app served by uvicorn (httptools) on the running loop: start, then stop."""

    def __init__(
        self,
        app: RegistryApp,
        host: str,
        port: int,
        limits: ReadLimits = READ_LIMITS,
        keep_alive: float = 5.0,
        tls: ServerCertificate | None = None,
    ) -> None:
        self._app = app
        self._limits = limits
        self._keep_alive = keep_alive
        self._host = host
        self._port = port
        self._tls = tls  # None: plain HTTP
        self._server: LoopServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.url: str | None = None

    async def start(self) -> str:
        """Bind, start serving and return the base URL `http://host:port` (real port).

        Raises BindError, naming the address and `--port`, when the port cannot be had."""
        sock = listen(self._host, self._port, setting="port", flag="--port", backlog=1024)
        config = uvicorn.Config(
            self._app,
            http=bounded(self._limits, BoundedHttpProtocol),
            timeout_keep_alive=self._keep_alive,  # type: ignore[arg-type]  # float works
            loop="none",
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
        config.load()
        config.ssl = self._tls.ssl_context() if self._tls is not None else None
        self._server = LoopServer(config)
        self._task = await start_serving(self._server, sock)
        scheme = "https" if self._tls is not None else "http"
        self.url = f"{scheme}://{address(self._host, sock.getsockname()[1])}"
        self._sweeper = asyncio.create_task(self._app.sweep_uploads())
        return self.url

    async def stop(self) -> None:
        """Finish the requests in flight, then close the listener."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task


async def serve(
    app: RegistryApp, host: str, port: int, tls: ServerCertificate | None = None
) -> None:
    """Serve `app` until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = RegistryServer(app, host, port, tls=tls)
    url = await server.start()
    log.info("modelgate registry listening on %s", url)
    try:
        await stop.wait()
    finally:
        await server.stop()
        log.info("modelgate registry stopped")


def run(
    store_dir: Path,
    *,
    host: str,
    port: int,
    token_file: Path | None,
    protect_reads: bool,
    tls: TlsFiles | None = None,
    upload_ttl: float = UPLOAD_TTL,
) -> None:
    """`modelgate registry serve`: the store in `store_dir` over HTTP (HTTPS with `tls`)
    until SIGINT/SIGTERM.

    Raises ValueError for an unusable token file or `protect_reads` without one, TlsError
    (a ValueError) for certificate files that cannot serve.
    """
    import uvloop

    from modelgate.registry.store import RegistryStore

    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("the registry server must run in the main thread (signal handling)")
    certificate = ServerCertificate(tls) if tls is not None else None
    tokens = TokenFile(token_file, load_tokens) if token_file is not None else ()
    if protect_reads and not tokens:
        raise ValueError("--protect-reads needs --token-file")
    if not logging.getLogger().handlers:
        # The address line is how callers (and tests) learn the port: it must be seen.
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    store = RegistryStore(store_dir)
    # What servers killed before they could clean up left behind.
    sweep_uploads(incoming_folders(store.root), upload_ttl, remove_folders=True)
    # Uploads wait in a folder of this process's own (beside the store, where there is room
    # for big models): servers sharing a store never register each other's. A long-idle
    # folder may go in another server's startup sweep: an upload makes it again.
    with tempfile.TemporaryDirectory(
        dir=store.root, prefix=INCOMING_PREFIX, ignore_cleanup_errors=True
    ) as incoming:
        app = build_app(
            store, Path(incoming), tokens=tokens, protect_reads=protect_reads,
            upload_ttl=upload_ttl,
        )  # fmt: skip
        uvloop.run(serve(app, host, port, certificate))
