"""Fixtures, layered like the system: models -> registry -> settings -> gateway -> clients."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import uvloop
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

import certs
import modelzoo
from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb
from modelgate.gateway.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from modelgate.gateway.server import Gateway
from modelgate.gateway.settings import BatchSettings, ModelServingSettings, ServerSettings
from modelgate.registry.server import RegistryApp, RegistryServer
from modelgate.registry.store import RegistryStore
from modelgate.registry.types import Stage
from modelgate.tls import ServerCertificate

DATATYPES = tuple(modelzoo.ONNX_TYPES)
# The typed `contents` field of ModelInferRequest that carries each datatype (FP16 has none).
TYPED_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
T = TypeVar("T")

# Property-based tests: a modest, fixed set of examples (the same on every run, so CI is
# reproducible and a failure repeats), no per-example deadline (each one is a request to a
# real server on a shared machine), and no example database written into the repository.
hypothesis_settings.register_profile(
    "modelgate",
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# A longer hunt, by hand: pytest --hypothesis-profile modelgate-long tests/.../test_*fuzz*.py
hypothesis_settings.register_profile(
    "modelgate-long", hypothesis_settings.get_profile("modelgate"), max_examples=5000,
    derandomize=False,
)  # fmt: skip
hypothesis_settings.load_profile("modelgate")

# Any JSON value a client might send: integers of any size, NaN and infinities among the
# floats (`json.dumps` writes them; a JSON parser must refuse them), nested lists and objects.
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=8)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def nested(depth: int, as_object: bool = False, value: Any = 0) -> Any:
    """`value` inside `depth` lists (or objects), built without recursion."""
    for _ in range(depth):
        value = {"a": value} if as_object else [value]
    return value


# Values nested about 1,000 levels deep: within what the servers' JSON parser takes (orjson:
# 1,024 levels) when sent a few levels down in a body, and past Python's recursion limit
# for a server that formats one into a message (repr, str, json.dumps). (Hypothesis raises
# that limit while a test runs, so json.dumps can write them.)
DEEP_VALUES = st.builds(nested, st.integers(990, 1018), st.booleans())
# Edits for `mutated`: (position, bytes to write there; empty: cut the message there).
BYTE_EDITS = st.lists(st.tuples(st.integers(0, 10**6), st.binary(max_size=3)), max_size=6)


def mutated(good: bytes, edits: list[tuple[int, bytes]]) -> bytes:
    """`good` with each edit's bytes written over as many at its position (wrapped to the
    message's length), or the message cut there when an edit has none."""
    out = bytearray(good)
    for position, replacement in edits:
        at = position % (len(out) + 1)
        if replacement:
            out[at : at + len(replacement)] = replacement
        else:
            del out[at:]
    return bytes(out)


@pytest.fixture(scope="session")
def model_files() -> dict[str, bytes]:
    """Every test model by the name it is registered under."""
    files = {
        "classifier": modelzoo.classifier(),
        "lookup": modelzoo.lookup(),
        "pair": modelzoo.two_inputs(),
        "fixed": modelzoo.echo("FP32", width=4, batch=1),
    }
    for datatype in DATATYPES:
        files[f"echo_{datatype.lower()}"] = modelzoo.echo(datatype)
    return files


@pytest.fixture(scope="session")
def reference() -> Callable[[str, dict[str, np.ndarray]], list[np.ndarray]]:
    """In-process ONNX Runtime on the same model bytes: what the gateway must answer."""
    sessions: dict[str, ort.InferenceSession] = {}

    def run(model: bytes | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        key = model if isinstance(model, str) else str(hash(model))
        if key not in sessions:
            sessions[key] = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        return sessions[key].run(None, feeds)  # type: ignore[no-any-return]

    return run  # type: ignore[return-value]


def filled_store(root: Path, model_files: dict[str, bytes]) -> RegistryStore:
    """An embedded registry at `root` with every test model in production."""
    registry = RegistryStore(root, create=True)
    for name, data in model_files.items():
        registry.register(name, data, stage=Stage.PRODUCTION)
    return registry


def loopback_settings(store: RegistryStore) -> ServerSettings:
    """Loopback, free ports, default batching."""
    return ServerSettings(
        store=store.root, host="127.0.0.1", http_port=0, grpc_port=0, metrics_port=0,
        drain_delay=0.0, drain_seconds=5.0,
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path, model_files: dict[str, bytes]) -> RegistryStore:
    """An embedded registry with every test model in production."""
    return filled_store(tmp_path / "store", model_files)


@pytest.fixture
def settings(store: RegistryStore) -> ServerSettings:
    """Loopback, free ports, default batching."""
    return loopback_settings(store)


def with_batching(settings: ServerSettings, **batch: int) -> ServerSettings:
    """`settings` with other batching options for every model."""
    models = ModelServingSettings(BatchSettings(**batch), settings.models.runtime)
    return dataclasses.replace(settings, models=models)


@contextlib.asynccontextmanager
async def running(settings: ServerSettings, store: RegistryStore) -> AsyncIterator[Gateway]:
    """A started gateway whose models have finished loading; always stopped afterwards."""
    gw = Gateway(settings, store)
    await gw.start()
    try:
        await gw.wait_loaded()
        yield gw
    finally:
        await gw.stop()


@contextlib.contextmanager
def loop_thread() -> Iterator[Callable[[Coroutine[Any, Any, T]], T]]:
    """An event loop (uvloop, as in production) on a thread of its own, for synchronous tests
    of servers: yields `run(coroutine)`, which runs the coroutine there and returns its
    result. The loop stops and closes afterwards."""
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="server-loop", daemon=True)
    thread.start()

    def run(coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(120)

    try:
        yield run
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@contextlib.contextmanager
def running_in_thread(settings: ServerSettings, store: RegistryStore) -> Iterator[Gateway]:
    """`running` for synchronous tests: the gateway serves from its own thread's loop."""
    with loop_thread() as run:
        context = running(settings, store)
        gateway = run(context.__aenter__())
        try:
            yield gateway
        finally:
            run(context.__aexit__(None, None, None))


@contextlib.contextmanager
def serving_registry(app: RegistryApp, tls: ServerCertificate | None = None) -> Iterator[str]:
    """A registry `app` on 127.0.0.1 (a free port; HTTPS with `tls`) on its own loop in a
    thread; yields its URL and always stops it."""
    with loop_thread() as run:
        server = RegistryServer(app, "127.0.0.1", 0, tls=tls)
        url = run(server.start())
        try:
            yield url
        finally:
            run(server.stop())


@pytest.fixture(scope="module")
def module_gateway(
    tmp_path_factory: pytest.TempPathFactory, model_files: dict[str, bytes]
) -> Iterator[Gateway]:
    """One gateway with every test model for a whole test module, serving from its own
    thread: for synchronous tests that send it many requests (Hypothesis).

    It does not poll the registry (nothing changes it here): the poll's jitter draws from
    the global `random`, which Hypothesis refuses to see change while it generates data.
    """
    store = filled_store(tmp_path_factory.mktemp("module") / "store", model_files)
    settings = dataclasses.replace(loopback_settings(store), poll_interval=86_400.0)
    with running_in_thread(settings, store) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def module_http(module_gateway: Gateway) -> Iterator[httpx.Client]:
    """A synchronous HTTP client of `module_gateway`."""
    assert module_gateway.addresses is not None
    with httpx.Client(base_url=f"http://{module_gateway.addresses.http}", timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def module_channel(module_gateway: Gateway) -> Iterator[grpc.Channel]:
    """A synchronous gRPC channel to `module_gateway`."""
    assert module_gateway.addresses is not None
    with grpc.insecure_channel(module_gateway.addresses.grpc) as channel:
        yield channel


@pytest.fixture
async def gateway(settings: ServerSettings, store: RegistryStore) -> AsyncIterator[Gateway]:
    """A running gateway with every test model loaded."""
    async with running(settings, store) as gw:
        yield gw


@pytest.fixture
async def http(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    assert gateway.addresses is not None
    async with httpx.AsyncClient(base_url=f"http://{gateway.addresses.http}") as client:
        yield client


@pytest.fixture
async def grpc_stub(gateway: Gateway) -> AsyncIterator[pb_grpc.GRPCInferenceServiceStub]:
    assert gateway.addresses is not None
    async with grpc.aio.insecure_channel(gateway.addresses.grpc) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


class Alarms(logging.Handler):
    """The project's warnings and errors since the last `clear`: a server's log when its
    tests expect none."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def clear(self) -> None:
        self.records.clear()

    def assert_none(self) -> None:
        assert not self.records, self.records[0].getMessage()[:2000]

    def __repr__(self) -> str:  # Hypothesis prints a failing example's arguments
        return f"Alarms({len(self.records)} records)"


# Python's default recursion limit, under which the servers run in production.
PYTHON_RECURSION_LIMIT = 1000


@contextlib.contextmanager
def production_recursion_limit() -> Iterator[None]:
    """Python's default recursion limit while a request is served: Hypothesis raises the
    (process-wide) limit while a test runs, which would hide a RecursionError from a server
    running in this process."""
    raised = sys.getrecursionlimit()
    sys.setrecursionlimit(PYTHON_RECURSION_LIMIT)
    try:
        yield
    finally:
        sys.setrecursionlimit(raised)


@pytest.fixture(scope="module")
def alarms() -> Iterator[Alarms]:
    """Warnings and errors logged by modelgate while the test module runs."""
    handler = Alarms()
    logger = logging.getLogger("modelgate")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng()


async def scrape(gateway: Gateway) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample the metrics endpoint exports: (name, labels) -> value."""
    assert gateway.addresses is not None
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://{gateway.addresses.metrics}/metrics")).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """One sample's value (0 when absent, as a counter that never moved)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def _peak_kib() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


@contextlib.contextmanager
def peak_growth() -> Iterator[Callable[[], int]]:
    """How far this process's peak resident memory rose within the block above where it
    stood at the start, in bytes (Linux resets the peak through /proc/self/clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")
    start = _peak_kib()
    yield lambda: (_peak_kib() - start) * 1024


def assert_serves_http(client: httpx.Client, rng: np.random.Generator) -> None:
    """A good V2 JSON request to `echo_fp32` is answered with its own data."""
    x = rng.normal(size=(2, 3)).astype(np.float32)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": x.tolist()}]}
    r = client.post("/v2/models/echo_fp32/infer", json=body)
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(np.array(r.json()["outputs"][0]["data"], np.float32), x.ravel())


def assert_serves_grpc(stub: pb_grpc.GRPCInferenceServiceStub, rng: np.random.Generator) -> None:
    """A good raw ModelInfer request to `echo_fp32` is answered with its own data."""
    x = rng.normal(size=(2, 3)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="echo_fp32")
    request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    answer = stub.ModelInfer(request, timeout=30)
    got = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(2, 3)
    np.testing.assert_array_equal(got, x)


@pytest.fixture
def pki(tmp_path: Path) -> certs.Pki:
    """A CA, server and client certificates (good, expired), a stranger's (tests/certs.py)."""
    return certs.make_pki(tmp_path / "pki")
