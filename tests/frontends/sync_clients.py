"""tritonclient's synchronous clients, driven from async tests: each call runs in a worker
thread while the gateway runs on the test's event loop."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any, TypeVar

import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from modelgate.gateway.server import Gateway

T = TypeVar("T")


def connect(gateway: Gateway, protocol: str) -> Any:
    assert gateway.addresses is not None
    if protocol == "grpc":
        return triton_grpc.InferenceServerClient(gateway.addresses.grpc)
    return triton_http.InferenceServerClient(gateway.addresses.http)


def client_module(protocol: str) -> Any:
    return triton_grpc if protocol == "grpc" else triton_http


async def in_thread(call: Callable[[], T]) -> T:
    """`call()` on a worker thread, then its garbage collected there too. The HTTP client's
    `__del__` closes it a second time, which gevent refuses on any thread but the client's;
    a client caught in a reference cycle (an exception's traceback holds the frame that
    holds it) would otherwise be collected wherever the collector next runs."""

    def collected() -> T:
        try:
            return call()
        finally:
            gc.collect()

    return await asyncio.to_thread(collected)
