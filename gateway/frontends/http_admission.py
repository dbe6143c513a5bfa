"""Admission of HTTP inference requests in the connection protocol, before the application.

Two rules, applied as soon as a request's head is parsed, before uvicorn builds a request
cycle or a task for it, so that refusing costs a small part of serving:

1. At capacity (every `max_inflight` place taken, `core/admission.py`), an inference request
   is answered 503 with `Retry-After` from bytes prepared once; its body is dropped as it
   arrives and the connection stays open for its next request (`modelgate.http_limits`).
   Counted like the application's own refusals.
2. Slow bodies: an inference request holds its place from its head on, while its body
   arrives (at most `body_timeout`). So that one client cannot hold every place with bodies
   it sends slowly, the inference requests whose body is still arriving from one client
   (peer address) hold at most a quarter of `max_inflight` places; beyond, 503 at once too.

Neither rule applies to a request pipelined behind an unanswered one on its connection
when its head is parsed: uvicorn reads no more of the connection until its turn, when places
may have come free, and the application's admission count decides then (one such request
per connection). Its body may still be arriving when its turn comes, though, and then it
holds a place like any slow body: it is counted in its client's share from its turn on, and
beyond the share answered 503 by a small application instead of the real one
(`AdmittingHttpProtocol.admit_pipelined`).

The application's admission count stays the one that takes and gives back places; these
rules only refuse sooner.
"""

from __future__ import annotations

import dataclasses
import functools
import urllib.parse
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import httptools
import orjson

from modelgate.gateway.core.admission import RETRY_AFTER_SECONDS, Admission
from modelgate.gateway.frontends.http import REMEMBERED_PATH_CHARS, Send, is_inference
from modelgate.gateway.frontends.http_wire import Receive
from modelgate.http_limits import BoundedHttpProtocol, PreparedAnswer

# The share of `max_inflight` that one client's arriving bodies may hold.
CLIENT_SHARE_OF_BODIES = 0.25

_RETRY = f"retry-after: {RETRY_AFTER_SECONDS}\r\n"
_UNAVAILABLE = "503 Service Unavailable"


class Shedding(Protocol):
    """A server that sheds load at capacity by not accepting connections for a while."""

    def shed(self) -> None: ...


class ArrivingBodies:
    """The inference requests whose body is still arriving, counted by client; each client
    may have at most `share` of them."""

    def __init__(self, share: int, on_refuse: Callable[[], object] | None = None) -> None:
        self.share = share
        self._by_client: dict[str, int] = {}
        self._on_refuse = on_refuse  # counts a refusal (the metric's `slow_body` reason)

    def begin(self, client: str) -> bool:
        """Count one more body arriving from `client`; False (nothing counted, the refusal
        counted by `on_refuse`) when it already has its share."""
        count = self._by_client.get(client, 0)
        if count >= self.share:
            if self._on_refuse is not None:
                self._on_refuse()
            return False
        self._by_client[client] = count + 1
        return True

    def end(self, client: str) -> None:
        """A body counted by `begin` is complete (or will never be)."""
        count = self._by_client[client] - 1
        if count:
            self._by_client[client] = count
        else:
            del self._by_client[client]

    def of(self, client: str) -> int:
        """How many bodies are arriving from `client`."""
        return self._by_client.get(client, 0)


class AdmittingHttpProtocol(BoundedHttpProtocol):
    """The bounded protocol with the two rules above; `admitting` binds their state."""

    admission: ClassVar[Admission]
    bodies: ClassVar[ArrivingBodies]
    at_capacity: ClassVar[PreparedAnswer]
    over_share: ClassVar[PreparedAnswer]
    over_share_app: ClassVar[Callable[..., Any]]  # the same answer for a pipelined request
    shedder: ClassVar[Shedding | None] = None  # see `shedding`

    @classmethod
    def shedding(cls, server: Shedding) -> None:
        """From now on, a request refused at capacity closes its connection and tells
        `server`, which stops accepting connections for a while (http_connections.py)."""
        cls.at_capacity = dataclasses.replace(cls.at_capacity, closes=True)
        cls.shedder = server

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._body_from: str | None = None  # the client whose arriving body this one counts

    def early_answer(self) -> PreparedAnswer | None:
        if self.parser.get_method() != b"POST" or not _names_inference(self.url):
            return None
        if self.admission.refuses():
            if self.shedder is not None:
                self.shedder.shed()
            return self.at_capacity
        client = self.client[0] if self.client else ""
        if not self.bodies.begin(client):
            return self.over_share
        self._body_from = client
        return None

    def on_message_complete(self) -> None:
        self._body_arrived()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._body_arrived()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        if self.pipeline and not self.transport.is_closing():
            self.admit_pipelined()
        super().on_response_complete()  # starts the next pipelined request

    def admit_pipelined(self) -> None:
        """The slow-body rule for the pipelined request whose turn comes now (the oldest):
        if it is an inference request whose body is still arriving, it is counted in its
        client's share, or, the share being full, answered 503 instead of by the app."""
        cycle, _ = self.pipeline[-1]
        method, path = cycle.scope["method"], cycle.scope["path"]
        if not cycle.more_body or method != "POST" or not is_inference(method, path):
            return
        client = self.client[0] if self.client else ""
        if self.bodies.begin(client):
            self._body_from = client
        else:
            self.pipeline[-1] = (cycle, self.over_share_app)

    def _body_arrived(self) -> None:
        if self._body_from is not None:
            self.bodies.end(self._body_from)
            self._body_from = None


def _names_inference(url: bytes) -> bool:
    """Whether a POST to the request target `url` is an inference request, its path read
    as uvicorn reads it for the application. Remembered like the application's routes
    (the same few URLs again and again), for short URLs only: see `REMEMBERED_PATH_CHARS`."""
    if len(url) > REMEMBERED_PATH_CHARS:
        return _inference_target(url)
    return _remembered_inference_target(url)


def _inference_target(url: bytes) -> bool:
    path = httptools.parse_url(url).path.decode("ascii")
    if "%" in path:
        path = urllib.parse.unquote(path)
    return is_inference("POST", path)


_remembered_inference_target = functools.lru_cache(maxsize=1024)(_inference_target)


def refusing_app(message: str) -> Callable[[dict[str, Any], Receive, Send], Any]:
    """An ASGI app answering 503 with `Retry-After` and the JSON error `message`, without
    reading the body (uvicorn drops what still arrives)."""
    body = orjson.dumps({"error": message})
    headers = [
        (b"content-type", b"application/json"),
        (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
    ]

    async def refuse(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return refuse


def admitting_state(
    admission: Admission, on_slow_body: Callable[[], object] | None = None
) -> dict[str, Any]:
    """The class attributes of `AdmittingHttpProtocol` for one server's `admission`;
    `on_slow_body` counts each request refused for its client's share of arriving bodies."""
    share = max(1, int(admission.limit * CLIENT_SHARE_OF_BODIES))
    over_share = f"this client already has {share} requests whose body is still arriving; retry"
    return {
        "admission": admission,
        "bodies": ArrivingBodies(share, on_slow_body),
        "at_capacity": PreparedAnswer.of(_UNAVAILABLE, admission.refusal, _RETRY),
        "over_share": PreparedAnswer.of(_UNAVAILABLE, over_share, _RETRY),
        "over_share_app": staticmethod(refusing_app(over_share)),  # not a method: an app
    }
