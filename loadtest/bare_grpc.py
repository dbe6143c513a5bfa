"""Bare gRPC reference server: what grpcio reaches with no gateway at all.

Decodes ModelInferRequest (an array over raw_input_contents, or the typed contents),
makes one ONNX Runtime call, encodes ModelInferResponse with raw_output_contents. Also
answers ServerLive/ServerReady/ModelReady/ServerMetadata/ModelMetadata/ModelConfig, which
perf_analyzer needs before it sends load. The grpc.aio variants also serve Triton's
ModelStreamInfer (requests answered in turn on the stream), the bare reference for
`perf_analyzer --streaming`. Three variants, to measure which is fastest:

    python -m loadtest.bare_grpc --port 0 --model light                 # grpc.aio, asyncio loop
    python -m loadtest.bare_grpc --port 0 --model light --loop uvloop   # grpc.aio on uvloop
    python -m loadtest.bare_grpc --port 0 --model light --sync --workers 8  # thread-pool server

`--reuse-port` lets several of them share one port (SO_REUSEPORT): the reference for
`modelgate serve --workers N` (loadtest/workers.py starts them).
"""

from __future__ import annotations

import asyncio
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np

from loadtest.bare_model import (
    BareModel,
    announce,
    load,
    on_stop_signals,
    parser,
    run_on_loop,
)
from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb
from modelgate.gateway.protocol import grpc_predict_v2_pb2_grpc as pb_grpc


def _options(reuse_port: bool) -> list[tuple[str, int]]:
    """grpcio's server options. Without `reuse_port` a second server on the same port must
    fail, not quietly share it; with it, the processes started so share it on purpose."""
    return [
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.so_reuseport", int(reuse_port)),
    ]


# V2 datatype -> field of InferTensorContents, for clients that do not send raw contents.
_CONTENTS_FIELD = {
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
}


class RequestError(Exception):
    """A request this server cannot serve; `code` is the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class BareInference:
    """The protocol work both server flavours share: decode, run, encode; canned answers."""

    def __init__(self, model: BareModel) -> None:
        self.model = model
        # protobuf constructors take nested messages as dicts and enums by name
        self.metadata = pb.ModelMetadataResponse(**model.metadata())
        self.config = pb.ModelConfigResponse(config=model.triton_config())
        self.live = pb.ServerLiveResponse(live=True)
        self.ready = pb.ServerReadyResponse(ready=True)
        self.model_ready = pb.ModelReadyResponse(ready=True)
        self.server_metadata = pb.ServerMetadataResponse(name="bare_grpc", version="0")

    def check(self, name: str) -> None:
        """Raise NOT_FOUND unless `name` is the served model."""
        if name != self.model.name:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"unknown model {name!r}")

    def decode(self, request: Any) -> dict[str, np.ndarray]:
        """ModelInferRequest -> ORT feeds, without copying raw contents."""
        self.check(request.model_name)
        raw = request.raw_input_contents[:]  # sliced: iterating protobuf containers is slow
        feeds = {}
        try:
            for index, tensor in enumerate(request.inputs[:]):
                sig = self.model.inputs[tensor.name]
                shape = tuple(tensor.shape)
                if raw:  # as the gateway reads it: an array over the bytes, shaped at once
                    feeds[sig.name] = np.ndarray(shape, sig.dtype, raw[index])
                else:
                    values = getattr(tensor.contents, _CONTENTS_FIELD[tensor.datatype])
                    feeds[sig.name] = np.asarray(values, dtype=sig.dtype).reshape(shape)
        except (KeyError, IndexError, ValueError, TypeError) as exc:  # TypeError: too few bytes
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"bad input: {exc!r}") from None
        return feeds

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The one ORT call; a tensor the model rejects is the client's error."""
        try:
            return self.model.run(feeds)
        except Exception as exc:  # ORT's own exception hierarchy
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None

    def encode(self, request: Any, results: list[np.ndarray]) -> Any:
        """ORT outputs -> ModelInferResponse with raw_output_contents."""
        response = pb.ModelInferResponse(
            model_name=self.model.name,
            model_version="1",
            id=request.id,
            raw_output_contents=[a.tobytes() for a in results],
        )
        add = response.outputs.add  # in place: the constructor would copy a list of messages
        for s, a in zip(self.model.outputs, results, strict=True):
            add(name=s.name, datatype=s.datatype, shape=a.shape)
        return response


class AioServicer(pb_grpc.GRPCInferenceServiceServicer):
    """grpc.aio servicer; ORT runs inline on the loop unless an offload pool is given."""

    def __init__(self, inference: BareInference, offload: ThreadPoolExecutor | None) -> None:
        self._inference = inference
        self._offload = offload

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return self._inference.live

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return self._inference.ready

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return self._inference.server_metadata

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return await self._answer(request.name, self._inference.model_ready, context)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        return await self._answer(request.name, self._inference.metadata, context)

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        return await self._answer(request.name, self._inference.config, context)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        inference = self._inference
        try:
            feeds = inference.decode(request)
            if self._offload is None:
                results = inference.run(feeds)
            else:
                loop = asyncio.get_running_loop()
                results = await loop.run_in_executor(self._offload, inference.run, feeds)
        except RequestError as exc:
            await context.abort(exc.code, str(exc))
        return inference.encode(request, results)

    async def ModelStreamInfer(self, requests: Any, context: Any) -> Any:
        """Triton's streaming RPC, bare: each request answered in turn on the stream."""
        inference = self._inference
        loop = asyncio.get_running_loop()
        async for request in requests:
            try:
                feeds = inference.decode(request)
                if self._offload is None:
                    results = inference.run(feeds)
                else:
                    results = await loop.run_in_executor(self._offload, inference.run, feeds)
            except RequestError as exc:
                failed = pb.ModelInferResponse(id=request.id, model_name=request.model_name)
                yield pb.ModelStreamInferResponse(error_message=str(exc), infer_response=failed)
                continue
            yield pb.ModelStreamInferResponse(infer_response=inference.encode(request, results))

    async def _answer(self, name: str, answer: Any, context: Any) -> Any:
        try:
            self._inference.check(name)
        except RequestError as exc:
            await context.abort(exc.code, str(exc))
        return answer


class SyncServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Thread-pool servicer: each RPC runs in a worker thread, ORT releases the GIL."""

    def __init__(self, inference: BareInference) -> None:
        self._inference = inference

    def ServerLive(self, request: Any, context: Any) -> Any:
        return self._inference.live

    def ServerReady(self, request: Any, context: Any) -> Any:
        return self._inference.ready

    def ServerMetadata(self, request: Any, context: Any) -> Any:
        return self._inference.server_metadata

    def ModelReady(self, request: Any, context: Any) -> Any:
        return self._answer(request.name, self._inference.model_ready, context)

    def ModelMetadata(self, request: Any, context: Any) -> Any:
        return self._answer(request.name, self._inference.metadata, context)

    def ModelConfig(self, request: Any, context: Any) -> Any:
        return self._answer(request.name, self._inference.config, context)

    def ModelInfer(self, request: Any, context: Any) -> Any:
        inference = self._inference
        try:
            return inference.encode(request, inference.run(inference.decode(request)))
        except RequestError as exc:
            context.abort(exc.code, str(exc))  # raises

    def _answer(self, name: str, answer: Any, context: Any) -> Any:
        try:
            self._inference.check(name)
        except RequestError as exc:
            context.abort(exc.code, str(exc))
        return answer


async def serve_aio(
    inference: BareInference,
    host: str,
    port: int,
    offload: ThreadPoolExecutor | None,
    reuse_port: bool = False,
) -> None:
    """grpc.aio server on the running loop until SIGTERM/SIGINT."""
    server = grpc.aio.server(options=_options(reuse_port))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(AioServicer(inference, offload), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    announce(host, bound)
    await stop.wait()
    await server.stop(grace=1.0)


def serve_sync(
    inference: BareInference, host: str, port: int, workers: int, reuse_port: bool = False
) -> None:
    """grpc thread-pool server until SIGTERM/SIGINT."""
    stop = threading.Event()
    on_stop_signals(stop.set)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        server = grpc.server(pool, options=_options(reuse_port))
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(SyncServicer(inference), server)
        bound = server.add_insecure_port(f"{host}:{port}")
        server.start()
        announce(host, bound)
        stop.wait()
        server.stop(grace=1.0).wait()


def main(argv: list[str] | None = None) -> None:
    """Parse the CLI, build the model and serve the chosen variant."""
    cli = parser("Bare gRPC V2 server (benchmark baseline)", default_loop="asyncio")
    cli.add_argument("--sync", action="store_true", help="grpc thread-pool server, not aio")
    cli.add_argument("--workers", type=int, default=8, help="--sync: thread-pool size")
    args = cli.parse_args(argv)
    inference = BareInference(load(args))
    if args.sync:
        serve_sync(inference, args.host, args.port, args.workers, args.reuse_port)
        return
    run_on_loop(
        lambda offload: serve_aio(inference, args.host, args.port, offload, args.reuse_port),
        args,
    )


if __name__ == "__main__":
    main()
