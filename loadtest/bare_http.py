"""Bare HTTP reference server: what uvicorn + httptools + uvloop reach with no gateway at all.

A raw ASGI app that answers V2 JSON infer requests with one ONNX Runtime call each (orjson
in, one `np.asarray` per input, orjson out), plus the few GETs perf_analyzer makes before
it sends load. No batching, no validation beyond what NumPy and ORT do.

    python -m loadtest.bare_http --host 127.0.0.1 --port 0 --model light [--loop uvloop]

`--reuse-port` lets several of them share one port (SO_REUSEPORT): the reference for
`modelgate serve --workers N` (loadtest/workers.py starts them).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
import uvicorn

from loadtest.bare_model import (
    BareModel,
    announce,
    load,
    on_stop_signals,
    parser,
    run_on_loop,
)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON_HEADERS = [(b"content-type", b"application/json")]


class BareHttpApp:
    """The ASGI app: POST /v2/models/{m}/infer and the metadata/config/health GETs."""

    def __init__(self, model: BareModel, offload: ThreadPoolExecutor | None = None) -> None:
        self._model = model
        self._offload = offload
        self._metadata = orjson.dumps(model.metadata())
        self._config = orjson.dumps(model.triton_config())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        # /v2/models/{m}[/versions/{v}][/infer|/config|/ready] -> ["v2", "models", m, ...]
        parts = scope["path"].strip("/").split("/")
        if len(parts) >= 5 and parts[3] == "versions":
            del parts[3:5]
        method = scope["method"]
        if parts[:2] == ["v2", "models"] and len(parts) >= 3:
            if parts[2] != self._model.name:
                await _reply(send, 404, {"error": f"unknown model {parts[2]!r}"})
                return
            tail = parts[3] if len(parts) > 3 else ""
            if method == "POST" and tail == "infer":
                await self._infer(receive, send)
            elif method == "GET" and tail == "":
                await _reply_raw(send, 200, self._metadata)
            elif method == "GET" and tail == "config":
                await _reply_raw(send, 200, self._config)
            elif method == "GET" and tail == "ready":
                await _reply_raw(send, 200, b"")
            else:
                await _reply(send, 404, {"error": "not found"})
        elif method == "GET" and parts in (["v2", "health", "live"], ["v2", "health", "ready"]):
            await _reply_raw(send, 200, b"")
        elif method == "GET" and parts == ["v2"]:
            await _reply(send, 200, {"name": "bare_http", "version": "0", "extensions": []})
        else:
            await _reply(send, 404, {"error": "not found"})

    async def _infer(self, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        model = self._model
        try:
            doc = orjson.loads(body)
            feeds = {}
            for item in doc["inputs"]:
                sig = model.inputs[item["name"]]
                feeds[sig.name] = np.asarray(item["data"], dtype=sig.dtype).reshape(item["shape"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            await _reply(send, 400, {"error": f"bad request: {exc!r}"})
            return
        try:
            if self._offload is None:
                results = model.run(feeds)
            else:
                loop = asyncio.get_running_loop()
                results = await loop.run_in_executor(self._offload, model.run, feeds)
        except Exception as exc:  # ORT's own exception hierarchy: a bad tensor is the client's
            await _reply(send, 400, {"error": f"model run failed: {exc}"})
            return
        answer: dict[str, Any] = {
            "model_name": model.name,
            "model_version": "1",
            "outputs": [
                {"name": s.name, "datatype": s.datatype, "shape": a.shape, "data": a.ravel()}
                for s, a in zip(model.outputs, results, strict=True)
            ],
        }
        if "id" in doc:
            answer["id"] = doc["id"]
        await _reply_raw(send, 200, orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY))


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while message.get("more_body", False):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


async def _reply(send: Send, status: int, doc: dict[str, Any]) -> None:
    await _reply_raw(send, status, orjson.dumps(doc))


async def _reply_raw(send: Send, status: int, body: bytes) -> None:
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def serve(app: BareHttpApp, host: str, port: int, reuse_port: bool = False) -> None:
    """Serve until SIGTERM/SIGINT; prints `listening on HOST:PORT` once accepting.
    `reuse_port`: listen with SO_REUSEPORT, beside other processes on the same port."""
    config = uvicorn.Config(
        app,
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        interface="asgi3",
    )
    server = uvicorn.Server(config)
    # uvicorn swaps in its own handlers while serving and re-raises the signal after; ours
    # then make that re-raise a no-op, so the process ends with status 0.
    on_stop_signals(lambda: setattr(server, "should_exit", True))
    # proto must say TCP: asyncio sets TCP_NODELAY only on sockets whose proto is
    # IPPROTO_TCP, and without it the default loop answers a lone client in ~40 ms
    # (Nagle against delayed ACK). uvloop sets it regardless.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        announce(host, sock.getsockname()[1])
    await task


def main(argv: list[str] | None = None) -> None:
    """Parse the CLI, build the model and serve on the chosen event loop."""
    cli = parser("Bare uvicorn V2 JSON server (benchmark baseline)", default_loop="uvloop")
    args = cli.parse_args(argv)
    model = load(args)
    run_on_loop(
        lambda offload: serve(BareHttpApp(model, offload), args.host, args.port, args.reuse_port),
        args,
    )


if __name__ == "__main__":
    main()
