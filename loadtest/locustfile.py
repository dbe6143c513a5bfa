"""Locust load test of a modelgate gateway (any served model, every wire format).

Run from the repository's root (`pip install -e ".[loadtest]"`):

    locust -f loadtest/locustfile.py --headless -u 64 -r 16 -t 30s \\
        --host http://127.0.0.1:8000 --grpc-host 127.0.0.1:8001 --model iris

User classes (all of them by default, or name some after the options): `V2JsonUser`,
`V2BinaryUser` (Triton's binary tensor extension), `V1InstancesUser`, `GrpcInferUser`
(unary ModelInfer) and `GrpcStreamUser` (ModelStreamInfer, where the protocol stubs have
it). Requests are generated from the model's metadata, so BYTES inputs work too. The gRPC
users report every call through Locust's request events, so the statistics, charts, CSV
and HTML reports cover them as they cover HTTP, failures grouped by status code.

Options of this file (besides Locust's own): --model, --model-version, --rows (per
request), --routing-keys (how many distinct `x-routing-key` users; 0: none), --shifted
(share of rows moved away from the usual values, to exercise the drift monitor),
--grpc-host, and --answers-file (every answer's version, for loadtest/locust_rollout.py).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import queue
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import grpc
import grpc.experimental.gevent as grpc_gevent
import orjson
from locust import FastHttpUser, User, constant, events, task
from locust.env import Environment
from locust.exception import StopUser

from loadtest.rollout import Answer
from loadtest.workload import HttpRequest, Workload, WorkloadError, inputs_from_metadata
from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb
from modelgate.gateway.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from modelgate.gateway.settings import SETTINGS

# Locust runs users as greenlets: gRPC's own threads must yield to them too.
grpc_gevent.init_gevent()
# gevent's loop caches the time: without an update, Locust's --run-time timer (set after this
# file's imports, which take seconds) would count from before them and end the run early.
gevent.get_hub().loop.update_now()

STREAMING = hasattr(pb_grpc.GRPCInferenceServiceServicer, "ModelStreamInfer")
MAX_ANSWERS = 1_000_000  # answers kept for --answers-file; later ones are counted, not kept
ROUTING_HEADER: str = SETTINGS["routing_key_header"].default


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("modelgate")
    group.add_argument("--model", default="iris", help="model to load-test")
    group.add_argument(
        "--model-version",
        default="",
        help="version to address (default: none, the gateway routes by the registry's stages)",
    )
    group.add_argument("--rows", type=int, default=1, help="rows per request")
    group.add_argument(
        "--routing-keys",
        type=int,
        default=100,
        help=f"distinct {ROUTING_HEADER} values (users); 0: send none",
    )
    group.add_argument(
        "--shifted",
        type=float,
        default=0.0,
        help="share of rows shifted away from the usual values (0-1)",
    )
    group.add_argument(
        "--grpc-host", default="", help="gRPC address host:port (default: --host's host, port 8001)"
    )
    group.add_argument(
        "--answers-file",
        default="",
        help="write each answer's time, key and version here (JSON lines)",
    )


def _metadata(host: str, grpc_address: str, model: str, version: str) -> dict[str, Any]:
    """The model's V2 metadata: over HTTP from `host`, else over gRPC."""
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
    if not host and not grpc_address:
        raise WorkloadError("give the gateway's address: --host http://host:port or --grpc-host")
    if not host:
        with grpc.insecure_channel(grpc_address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            request = pb.ModelMetadataRequest(name=model, version=version)
            try:
                reply = stub.ModelMetadata(request, timeout=30)
            except grpc.RpcError as exc:
                detail = f"{exc.code().name} {exc.details()}"
                raise WorkloadError(f"ModelMetadata {path} at {grpc_address}: {detail}") from None
        inputs = [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                  for t in reply.inputs]  # fmt: skip
        return {"name": reply.name, "inputs": inputs}
    url = host.rstrip("/") + path
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            doc: dict[str, Any] = orjson.loads(answer.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:200].decode(errors="replace")
        raise WorkloadError(f"GET {url}: {exc.code} {detail}") from None
    except OSError as exc:
        raise WorkloadError(f"GET {url}: {exc}") from None
    return doc


@functools.cache
def _workload(
    host: str, grpc_address: str, model: str, version: str, rows: int, keys: int, shifted: float
) -> Workload | WorkloadError:
    """Cached, failures too: every user of a run that cannot start is told so at once."""
    try:
        inputs = inputs_from_metadata(_metadata(host, grpc_address, model, version))
        return Workload(model, version, inputs, rows=rows, keys=keys, shifted=shifted)
    except WorkloadError as exc:
        return exc


def workload_of(environment: Environment) -> Workload:
    """The workload this run's options ask for, built once per process from the model's
    metadata; WorkloadError says why it cannot be."""
    o = environment.parsed_options
    assert o is not None
    found = _workload(environment.host or "", o.grpc_host, o.model, o.model_version, o.rows,
                      o.routing_keys, o.shifted)  # fmt: skip
    if isinstance(found, WorkloadError):
        raise found
    return found


@events.test_start.add_listener
def _prepare(environment: Environment, **_: Any) -> None:
    """Read the metadata before users start: a wrong model or address is one line and
    exit status 2, not a traceback per user."""
    try:
        workload_of(environment)
    except WorkloadError as exc:
        logging.getLogger("modelgate.locust").error("modelgate: %s", exc)
        environment.process_exit_code = 2
        if environment.runner is not None:
            gevent.spawn(environment.runner.quit)


@events.init.add_listener
def _defaults(environment: Environment, **_: Any) -> None:
    o = environment.parsed_options
    if o is not None:
        ANSWERS.enabled = bool(o.answers_file)
    if o is not None and not o.grpc_host and environment.host:
        o.grpc_host = f"{urllib.parse.urlsplit(environment.host).hostname}:8001"


class AnswerLog:
    """Each answer's version (None: failed), for the rollout scenario; bounded, and kept
    only with --answers-file."""

    def __init__(self) -> None:
        self.enabled = False
        self.answers: list[Answer] = []
        self.dropped = 0

    def add(self, sent: float, protocol: str, key: str | None, version: str | None,
            error: str = "") -> None:  # fmt: skip
        if not self.enabled:
            return
        if len(self.answers) < MAX_ANSWERS:
            self.answers.append(Answer(time.time(), protocol, key, version, error[:200], sent))
        else:
            self.dropped += 1

    def write(self, path: Path) -> None:
        lines = (orjson.dumps(dataclasses.asdict(a)) for a in self.answers)
        path.write_bytes(b"\n".join(lines) + b"\n" if self.answers else b"")


ANSWERS = AnswerLog()


@events.test_stop.add_listener
def _write_answers(environment: Environment, **_: Any) -> None:
    o = environment.parsed_options
    if o is not None and o.answers_file:
        ANSWERS.write(Path(o.answers_file))


class _Workloads:
    """What a user class of this file shares: the run's workload, read at start."""

    workload: Workload | None = None

    def start_workload(self, environment: Environment) -> None:
        try:
            self.workload = workload_of(environment)
        except WorkloadError:
            self.workload = None  # _prepare said why, once, and stops the run

    def ready(self) -> Workload:
        """The workload; a user whose run cannot start stops quietly."""
        if self.workload is None:
            raise StopUser()
        return self.workload


class _HttpUser(_Workloads, FastHttpUser):
    """A V2 or V1 HTTP client; subclasses say which body they send and where."""

    abstract = True
    wait_time = constant(0)
    label = ""
    protocol = "http"

    def on_start(self) -> None:
        self.start_workload(self.environment)

    def request(self, workload: Workload) -> HttpRequest:
        raise NotImplementedError

    def url(self, workload: Workload) -> str:
        return workload.path("infer")

    def version_of(self, answer: Any) -> str | None:
        """The answering version, from a V2 answer's JSON (or its JSON part)."""
        body = answer.content or b""
        length = answer.headers.get("inference-header-content-length")
        doc = orjson.loads(body[: int(length)] if length else body)
        return str(doc["model_version"])

    @task
    def infer(self) -> None:
        workload = self.ready()
        payload = self.request(workload)
        key = workload.routing_key()
        headers = dict(payload.headers)
        if key is not None:
            headers[ROUTING_HEADER] = key
        sent = time.time()
        # FastHttpSession sends bytes as they are; its annotation names only str and dict.
        body: Any = payload.body
        with self.client.post(
            self.url(workload), data=body, headers=headers, name=self.label, catch_response=True
        ) as answer:
            if answer.status_code != 200:
                # Counted by status code alone: the gateway's reasons would split the rows.
                answer.failure(f"HTTP {answer.status_code}")
                ANSWERS.add(sent, self.protocol, key, None, (answer.text or "")[:200])
            else:
                ANSWERS.add(sent, self.protocol, key, self.version_of(answer))


class V2JsonUser(_HttpUser):
    """POST /v2/models/{m}/infer with a V2 JSON body."""

    label = "v2 json"

    def request(self, workload: Workload) -> HttpRequest:
        return workload.v2_json()


class V2BinaryUser(_HttpUser):
    """POST /v2/models/{m}/infer with binary input and output tensors."""

    label = "v2 binary"

    def request(self, workload: Workload) -> HttpRequest:
        return workload.v2_binary()


class V1InstancesUser(_HttpUser):
    """POST /v1/models/{m}:predict with `{"instances": [...]}` (V1 names no version)."""

    label = "v1 instances"
    protocol = "v1"

    def request(self, workload: Workload) -> HttpRequest:
        return workload.v1_instances()

    def url(self, workload: Workload) -> str:
        return f"/v1/models/{workload.model}:predict"

    def version_of(self, answer: Any) -> str | None:
        return None


class _GrpcUser(_Workloads, User):
    """A gRPC client whose every call is a Locust request event (type `grpc`)."""

    abstract = True
    wait_time = constant(0)

    channel: grpc.Channel | None = None

    def on_start(self) -> None:
        self.start_workload(self.environment)
        address = self.environment.parsed_options.grpc_host
        if not address:
            raise WorkloadError("the gRPC users need --grpc-host host:port (or --host)")
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)

    def on_stop(self) -> None:
        if self.channel is not None:
            self.channel.close()

    def request(self, workload: Workload) -> pb.ModelInferRequest:
        return workload.grpc()

    def report(self, name: str, started: float, length: int, error: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=error,
            context={},
        )


class GrpcStatusError(Exception):
    """A failed gRPC call; its text is the status code, so Locust counts failures by it."""


class GrpcInferUser(_GrpcUser):
    """Unary ModelInfer calls."""

    @task
    def infer(self) -> None:
        workload = self.ready()
        request = self.request(workload)
        key = workload.routing_key()
        metadata = ((ROUTING_HEADER, key),) if key is not None else None
        sent, started = time.time(), time.perf_counter()
        try:
            reply = self.stub.ModelInfer(request, metadata=metadata, timeout=60)
        except grpc.RpcError as exc:
            code = exc.code().name
            self.report("ModelInfer", started, 0, GrpcStatusError(code))
            ANSWERS.add(sent, "grpc", key, None, f"{code} {exc.details()}")
            return
        self.report("ModelInfer", started, reply.ByteSize(), None)
        ANSWERS.add(sent, "grpc", key, reply.model_version)


class GrpcStreamUser(_GrpcUser):
    """ModelStreamInfer: one stream per user, one request at a time on it. Only where the
    protocol stubs have ModelStreamInfer (the class is abstract, never run, otherwise)."""

    abstract = not STREAMING

    def on_start(self) -> None:
        super().on_start()
        self.outbox: queue.Queue[pb.ModelInferRequest | None] = queue.Queue(maxsize=1)
        self.replies: Iterator[Any] | None = None
        self.key: str | None = None

    def on_stop(self) -> None:
        if self.replies is not None:
            self.outbox.put(None)
        super().on_stop()

    def _requests(self) -> Iterator[pb.ModelInferRequest]:
        while (request := self.outbox.get()) is not None:
            yield request

    @task
    def infer(self) -> None:
        workload = self.ready()
        if self.replies is None:
            # A stream is one user: its routing key travels in the stream's metadata.
            self.key = workload.routing_key()
            metadata = ((ROUTING_HEADER, self.key),) if self.key is not None else None
            self.outbox = queue.Queue(maxsize=1)
            self.replies = self.stub.ModelStreamInfer(self._requests(), metadata=metadata)
        key = self.key
        request = self.request(workload)
        sent, started = time.time(), time.perf_counter()
        self.outbox.put(request)
        try:
            reply = next(self.replies)
        except (grpc.RpcError, StopIteration) as exc:
            code = exc.code().name if isinstance(exc, grpc.RpcError) else "STREAM_ENDED"
            self.replies = None  # the stream is over: the next task opens another
            self.report("ModelStreamInfer", started, 0, GrpcStatusError(code))
            ANSWERS.add(sent, "grpc-stream", key, None, code)
            return
        if reply.error_message:
            # Errors on a stream carry a message, no status code: counted as one kind.
            error = GrpcStatusError("STREAM_ERROR")
            self.report("ModelStreamInfer", started, reply.ByteSize(), error)
            ANSWERS.add(sent, "grpc-stream", key, None, reply.error_message)
            return
        self.report("ModelStreamInfer", started, reply.ByteSize(), None)
        ANSWERS.add(sent, "grpc-stream", key, reply.infer_response.model_version)
