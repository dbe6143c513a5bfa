"""The gRPC front end: `inference.GRPCInferenceService` on grpc.aio, plus the standard
health service and server reflection.

A thin adapter like the HTTP one: decode with the codec, call the `InferenceService`, encode;
`InferenceError` codes map to gRPC status codes in one table, applied by one wrapper.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from modelgate.errorlog import log_refused, log_unexpected
from modelgate.gateway.codecs import grpc as codec
from modelgate.gateway.core.access import Access, ApiToken
from modelgate.gateway.core.errors import ErrorCode, InferenceError, invalid
from modelgate.gateway.core.limits import ElementBudget
from modelgate.gateway.core.service import InferenceService
from modelgate.gateway.core.types import InferRequest
from modelgate.gateway.frontends.grpc_drain import CallGate, channelz_id, drain, shutting_down
from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb
from modelgate.gateway.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from modelgate.gateway.protocol import model_config_pb2 as mc
from modelgate.gateway.settings import ServerSettings

log = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"

STATUS_BY_CODE = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
}

# When tokens are required: which field of each method's request names the model it uses
# ("" for every model, as statistics without a name and the index; None for the server's
# metadata, which any token reads). ServerLive and ServerReady stay open for probes, as does
# the standard health service; ModelInfer checks its caller itself.
_MODEL_FIELD: dict[str, str | None] = {
    "ServerMetadata": None,
    "ModelReady": "name",
    "ModelMetadata": "name",
    "ModelConfig": "name",
    "ModelStatistics": "name",
    "RepositoryIndex": "",
    "RepositoryModelLoad": "model_name",
    "RepositoryModelUnload": "model_name",
}

# Calls grpcio takes beyond `max_inflight` inference calls (see `_start_here`).
CONTROL_HEADROOM = 64
# A connection without a call for this long is told to go (GOAWAY; channels reconnect when
# they next call), and one whose client does not answer a ping within KEEPALIVE_TIMEOUT_MS
# is closed: neither an abandoned nor a dead client keeps its connection.
IDLE_MS = 60_000
KEEPALIVE_TIME_MS = 60_000
KEEPALIVE_TIMEOUT_MS = 20_000

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


class MalformedMessage:
    """Stands in for a request whose bytes did not parse, so the handler can answer it."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _lenient(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """A request deserializer that never raises: grpcio would answer INTERNAL, but a
    malformed message is the client's mistake (INVALID_ARGUMENT)."""

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # protobuf's DecodeError, or anything it raises instead
            return MalformedMessage(exc)

    return deserialize


def _mapped(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Answer an `InferenceError` with its gRPC status; anything else is INTERNAL."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            if self._access is not None and handler.__name__ in _MODEL_FIELD:
                self._check_caller(handler.__name__, request, context)
            return await handler(self, _parsed(request), context)
        except Exception as exc:
            await _abort(context, exc, handler.__name__)

    return wrapper


def _parsed(request: Req) -> Req:
    if isinstance(request, MalformedMessage):
        raise _malformed(request.error)
    return request


def _malformed(error: Exception) -> InferenceError:
    return invalid(f"malformed protobuf message: {error}")


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> NoReturn:
    """End the call with the status `exc` maps to (`context.abort` raises)."""
    if isinstance(exc, InferenceError):
        status = STATUS_BY_CODE[exc.code]
        log_refused(log, method, status.name, exc.message)
        await context.abort(status, exc.message)
    log_unexpected(log, method, exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")
    raise AssertionError("unreachable: abort raises")


def _version(value: str) -> str | None:
    return value or None


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The V2 gRPC service over the shared `InferenceService`."""

    def __init__(
        self, service: InferenceService, settings: ServerSettings, gate: CallGate | None = None
    ) -> None:
        self._service = service
        self._gate = gate if gate is not None else CallGate()
        self._routing_key = settings.routing_key_header
        self._max_elements = settings.max_request_elements
        self._max_strings = settings.max_request_strings
        self._serialize = codec.InferResponseSerializer()
        self.max_stream_inflight = settings.max_inflight
        self._access = service.access

    def _check_caller(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> None:
        """UNAUTHENTICATED / PERMISSION_DENIED unless the call's token may do `method`."""
        assert self._access is not None
        token = self._access.authenticate(_metadata_value(context, "authorization"))
        field = _MODEL_FIELD[method]
        if field is None or isinstance(request, MalformedMessage):
            return  # a malformed message is answered INVALID_ARGUMENT next
        Access.authorize(token, (getattr(request, field) or None) if field else None)

    def _caller(self, context: grpc.aio.ServicerContext) -> ApiToken | None:
        """The call's token (UNAUTHENTICATED without a valid one); None when tokens are off."""
        if self._access is None:
            return None
        return self._access.authenticate(_metadata_value(context, "authorization"))

    @_mapped
    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=self._service.live())

    @_mapped
    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self._service.ready())

    @_mapped
    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        ready = self._service.model_ready(request.name, _version(request.version))
        return pb.ModelReadyResponse(ready=ready)

    @_mapped
    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        s = self._service
        return pb.ServerMetadataResponse(name=s.name, version=s.version, extensions=s.extensions)

    @_mapped
    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        meta = self._service.model_metadata(request.name, _version(request.version))
        return codec.encode_model_metadata(meta)

    @_mapped
    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        config = self._service.model_config(request.name, _version(request.version))
        return codec.encode_model_config(config)

    @_mapped
    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        stats = await self._service.statistics(request.name, _version(request.version))
        return codec.encode_model_statistics(stats)

    @_mapped
    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return codec.encode_repository_index(self._service.repository_index(request.ready))

    @_mapped
    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._service.change_repository("load", request.model_name)

    @_mapped
    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._service.change_repository("unload", request.model_name)

    async def ModelInfer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        # Takes and answers wire bytes (see `add_inference_service`), and maps its errors
        # itself rather than through `_mapped`: a coroutine and two calls less per request.
        admission = self._service.admission
        gate = self._gate
        try:
            if not gate.open:  # a stopping server refuses before anything else
                await gate.refuse()
            gate.enter()
            try:
                token = self._caller(context)  # who calls, before anything is decoded
                admission.enter()  # before decoding: a refused call costs no parsing
                try:
                    infer_request, raw = self._decode(request, context, token)
                    response = await self._service.infer(infer_request)
                    return self._serialize(response, raw)
                finally:
                    admission.leave()
            finally:
                gate.leave()
        except Exception as exc:
            await _abort(context, exc, "ModelInfer")

    async def ModelStreamInfer(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> None:
        """Triton's streaming extension: each request on the stream is answered, as soon as
        it is done (so not necessarily in order), by a ModelStreamInferResponse carrying its
        id; a request that fails is answered with its error and the stream goes on. When the
        server stops, the stream's requests in flight are answered, then it ends with
        UNAVAILABLE (requests sent after that were not served)."""
        gate = self._gate
        try:
            self._caller(context)  # a stream without a valid token ends at once
        except InferenceError as exc:
            await _abort(context, exc, "ModelStreamInfer")
        stream = _InferStream(self, context)
        gate.streams += 1
        reading = asyncio.ensure_future(stream.read(requests))
        stopping = asyncio.ensure_future(gate.closing.wait())
        try:
            await asyncio.wait((reading, stopping), return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():
                reading.cancel()
                await stream.finish()
                await _abort(context, shutting_down(), "ModelStreamInfer")
            reading.result()  # the client's half-close, or its cancellation
            await stream.finish()
        finally:
            reading.cancel()
            stopping.cancel()
            stream.cancel()  # the client went away: its pending requests are dropped
            gate.streams -= 1

    async def answer_on_stream(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """One stream request's ModelStreamInferResponse, as wire bytes."""
        admission = self._service.admission
        gate = self._gate
        try:
            gate.enter()
            try:
                token = self._caller(context)
                admission.enter()
                try:
                    infer_request, raw = self._decode(request, context, token)
                    response = await self._service.infer(infer_request)
                    serialized = self._serialize(response, raw)
                    return _STREAM_RESPONSE_TAG + _varint_framed(serialized)
                finally:
                    admission.leave()
            finally:
                gate.leave()
        except Exception as exc:
            if isinstance(exc, InferenceError):
                log_refused(log, "ModelStreamInfer", exc.code.name, exc.message)
                message = exc.message
            else:
                log_unexpected(log, "ModelStreamInfer", exc)
                message = "internal error"
            answer = pb.ModelStreamInferResponse(error_message=message)
            _identify(answer.infer_response, request)
            return answer.SerializeToString()

    def _decode(
        self, request: bytes, context: grpc.aio.ServicerContext, token: ApiToken | None
    ) -> tuple[InferRequest, bool]:
        """A ModelInferRequest's bytes as the core's request, with the call's deadline and
        routing key; whether the answer should carry raw contents. PERMISSION_DENIED when
        `token` (None: tokens are off) may not use the model it names."""
        try:
            message = pb.ModelInferRequest.FromString(request)
        except Exception as exc:  # as in `_lenient`
            raise _malformed(exc) from None
        budget = ElementBudget(self._max_elements, self._max_strings)
        infer_request, raw = codec.decode_infer_request(message, budget)
        if token is not None:
            Access.authorize(token, infer_request.model)
        remaining = context.time_remaining()
        if remaining is not None and (
            infer_request.timeout is None or remaining < infer_request.timeout
        ):
            infer_request.timeout = remaining
        if self._service.uses_routing_key(infer_request.model):  # metadata: per call
            infer_request.routing_key = _metadata_value(context, self._routing_key)
        return infer_request, raw


# A ModelStreamInferResponse is field 2 (infer_response, length-delimited) around the
# ModelInferResponse bytes the unary path already builds: framed, not parsed again.
_STREAM_RESPONSE_TAG = b"\x12"


def _varint_framed(payload: bytes) -> bytes:
    n, head = len(payload), bytearray()
    while n > 0x7F:
        head.append((n & 0x7F) | 0x80)
        n >>= 7
    head.append(n)
    return bytes(head) + payload


def _identify(response: Any, request: bytes) -> None:
    """Copy a failed request's id and model into its error answer, when it parses."""
    try:
        message = pb.ModelInferRequest.FromString(request)
    except Exception:
        return
    response.id = message.id
    response.model_name = message.model_name
    response.model_version = message.model_version


class _InferStream:
    """The requests of one ModelStreamInfer call in flight: at most `max_inflight` at a time
    (beyond that the stream is not read, and HTTP/2 flow control holds the client back);
    answers written one at a time, as they finish."""

    def __init__(self, servicer: InferenceServicer, context: grpc.aio.ServicerContext) -> None:
        self._servicer = servicer
        self._context = context
        self._room = asyncio.Semaphore(servicer.max_stream_inflight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._writing = asyncio.Lock()

    async def read(self, requests: AsyncIterator[bytes]) -> None:
        """Take every request of the stream, until the client's half-close."""
        async for request in requests:
            await self.take(request)  # waits while the stream has its bound in flight

    async def take(self, request: bytes) -> None:
        await self._room.acquire()
        task = asyncio.ensure_future(self._run(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, request: bytes) -> None:
        try:
            answer = await self._servicer.answer_on_stream(request, self._context)
            async with self._writing:
                await self._context.write(answer)
        finally:
            self._room.release()

    async def finish(self) -> None:
        """Wait until every request taken is answered."""
        while self._tasks:
            await asyncio.gather(*self._tasks)

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()


def _metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for metadatum in context.invocation_metadata() or ():
        if metadatum[0] == key:
            value = metadatum[1]
            return value if isinstance(value, str) else value.decode()
    return None


def add_inference_service(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Register the V2 service like the generated helper does, with lenient parsing.
    ModelInfer parses and serializes its messages itself: grpcio hands it the request's
    bytes and sends the bytes it answers as they are (no (de)serializer given)."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers = {}
    for method in service.methods:
        if method.name == "ModelInfer":
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(servicer.ModelInfer)
            continue
        if method.name == "ModelStreamInfer":
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(servicer.ModelStreamInfer)
            continue
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=_lenient(request_type.FromString),
            response_serializer=response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class ReadinessHealth(health.aio.HealthServicer):
    """The standard health service; Check answers from the gateway's readiness at the time
    of the call, Watch streams the changes `GrpcFrontend` tracks."""

    def __init__(self, service: InferenceService, gate: CallGate) -> None:
        super().__init__()
        self._service = service
        self._gate = gate

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.service not in ("", SERVICE_NAME):
            return await super().Check(request, context)
        serving = self._service.ready()
        return health_pb2.HealthCheckResponse(
            status=health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        self._gate.streams += 1  # open until the server stops: no call to wait for
        try:
            await super().Watch(request, context)
        finally:
            self._gate.streams -= 1


def _reflection_pool() -> descriptor_pool.DescriptorPool:
    """One pool with every served service: ours live in a private pool (see
    proto/generate.py), health and reflection in protobuf's default one."""
    pool = descriptor_pool.DescriptorPool()
    for module in (mc, pb, health_pb2, reflection_pb2):
        file_proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(file_proto)
        pool.Add(file_proto)
    return pool


class GrpcFrontend:
    """Owns the grpc.aio server; runs it on the caller's loop or on its own thread's loop.
    `reuse_port`: listen with SO_REUSEPORT, beside the server's other serving processes."""

    def __init__(
        self,
        service: InferenceService,
        settings: ServerSettings,
        credentials: grpc.ServerCredentials | None = None,
        *,
        reuse_port: bool = False,
    ) -> None:
        self._service = service
        self._settings = settings
        self._credentials = credentials  # TLS (modelgate/tls.py); None: plain text
        self._reuse_port = reuse_port
        self._server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        # While it stops, the gate may hold as many refusals as grpcio takes inference calls.
        self._gate = CallGate(settings.max_inflight)
        self._health = ReadinessHealth(service, self._gate)
        self._health_task: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> int:
        """Start serving on host:port (0 picks a free port); returns the bound port."""
        if self._settings.grpc_workers != "thread":
            return await self._start_here(host, port)
        started: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run_thread, args=(host, port, started), name="grpc", daemon=True
        )
        self._thread.start()
        return await asyncio.wrap_future(started)

    def _run_thread(self, host: str, port: int, started: concurrent.futures.Future[int]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            bound = loop.run_until_complete(self._start_here(host, port))
        except BaseException as exc:
            started.set_exception(exc)
            loop.close()
            return
        started.set_result(bound)
        loop.run_forever()  # until `stop` has stopped the server and then this loop
        loop.close()

    async def _start_here(self, host: str, port: int) -> int:
        limit = self._settings.max_body_bytes
        inflight = self._settings.max_inflight
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # Shared only beside the other serving processes of one server: otherwise
                # a second server on the same port would quietly take half the calls.
                ("grpc.so_reuseport", int(self._reuse_port)),
                # One connection cannot open more streams than the process admits: the
                # client holds the rest back instead of the server buffering them.
                ("grpc.max_concurrent_streams", inflight),
                # grpcio closes connections beyond the limit as they come, and one that has
                # not completed its HTTP/2 handshake in time (it cannot close idle ones
                # first, as HTTP does).
                ("grpc.max_allowed_incoming_connections", self._settings.max_connections),
                ("grpc.server_handshake_timeout_ms", round(self._settings.header_timeout * 1000)),
                ("grpc.max_connection_idle_ms", IDLE_MS),
                ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
                ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            ],
            # grpcio refuses calls beyond this with RESOURCE_EXHAUSTED before reading them;
            # the headroom keeps health and metadata calls answered while inference calls
            # fill `max_inflight` (those beyond it are refused by the admission count).
            maximum_concurrent_rpcs=inflight + CONTROL_HEADROOM,
        )
        self._gate.server_id = channelz_id(server)
        add_inference_service(InferenceServicer(self._service, self._settings, self._gate), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
            server,
            pool=_reflection_pool(),
        )
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if self._credentials is not None:
            bound = server.add_secure_port(address, self._credentials)
        else:
            bound = server.add_insecure_port(address)
        await server.start()
        self._server = server
        self._health_task = asyncio.create_task(self._track_readiness())
        return bound

    async def _track_readiness(self) -> None:
        """Keep the standard health service in step with the gateway's readiness."""
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        last = None
        while True:
            status = serving if self._service.ready() else not_serving
            if status != last:
                await self._health.set("", status)
                await self._health.set(SERVICE_NAME, status)
                last = status
            await asyncio.sleep(0.2)

    async def stop(self, grace: float) -> None:
        """Refuse new inference calls (UNAVAILABLE) while the ones in flight finish, then
        stop: GOAWAY, the port closed; calls still running after `grace` seconds in all
        are cancelled."""
        if self._loop is not None:
            future = asyncio.run_coroutine_threadsafe(self._stop_here(grace), self._loop)
            await asyncio.wrap_future(future)
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                await asyncio.to_thread(self._thread.join)
        else:
            await self._stop_here(grace)

    async def _stop_here(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        if self._health_task is not None:
            self._health_task.cancel()
        if self._server is not None:
            await self._health.enter_graceful_shutdown()
            await drain(self._server, self._gate, deadline)  # see grpc_drain: not `stop` alone
