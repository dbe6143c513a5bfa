"""Process lifecycle: build the core, start the servers, report addresses, drain, stop.

One asyncio loop (uvloop) runs the HTTP server, the gRPC server (or gRPC gets its own loop
in a thread: `grpc_workers="thread"`), the model loading and later the registry watcher;
ONNX Runtime runs in the batchers' worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import uvicorn

from modelgate.gateway.alerting import DriftAlerts, WebhookUrls, notifier_for
from modelgate.gateway.core.admission import Admission
from modelgate.gateway.core.deployments import Deployments
from modelgate.gateway.core.guard import RolloutGuard, ServedTraffic
from modelgate.gateway.core.service import InferenceService
from modelgate.gateway.core.shadow import ShadowMirror
from modelgate.gateway.drift_link import DriftUplink
from modelgate.gateway.frontends.grpc import GrpcFrontend
from modelgate.gateway.frontends.http import HttpFrontend
from modelgate.gateway.frontends.http_connections import (
    DrainingServer,
    HttpDrain,
    SheddingMetrics,
    protocol_for,
    read_limits,
)
from modelgate.gateway.metrics import Metrics
from modelgate.gateway.metrics_endpoint import MetricsEndpoint
from modelgate.gateway.route_link import RouteReceiver
from modelgate.gateway.security import Security
from modelgate.gateway.settings import ServerSettings
from modelgate.http_limits import start_serving
from modelgate.listen import address, bind_error, listen
from modelgate.monitor.monitor import DriftMonitor
from modelgate.registry.client import RegistryClient, local_store, open_registry
from modelgate.registry.errors import AuthError, LocationError, RegistryError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Addresses:
    http: str
    grpc: str
    metrics: str


class Gateway:
    """One serving process: HTTP, gRPC and metrics endpoints over one `InferenceService`.

    `shared_ports`: one of several serving processes under a supervisor (gateway/supervisor.py)
    that has reserved the HTTP and gRPC ports; this one listens on them beside the others.
    `drift_uplink`: the supervisor judges drift and sends the webhooks; this one sketches.
    `pushed_routes`: the supervisor follows the registry and pushes the stages
    (gateway/route_link.py); otherwise this gateway follows the registry itself.
    """

    def __init__(
        self,
        settings: ServerSettings,
        registry: RegistryClient | None = None,
        *,
        shared_ports: bool = False,
        drift_uplink: DriftUplink | None = None,
        pushed_routes: RouteReceiver | None = None,
    ) -> None:
        self.settings = settings
        self._pushed_routes = pushed_routes
        self._shared_ports = shared_ports
        self.security = Security.of(settings)  # first: a bad certificate stops nothing started
        self._drift_uplink = drift_uplink
        self.metrics = Metrics()
        self._owns_registry = registry is None
        self.registry = registry if registry is not None else _open_registry(settings)
        self.notifier = (
            notifier_for(settings, self.metrics.registry, _store_dir(settings))
            if drift_uplink is None
            else None
        )
        self.monitor = DriftMonitor(
            settings.models.drift,
            self.metrics.registry,
            overrides={name: m.drift for name, m in settings.model_overrides.items()},
            resume=self._was_drifting if self.notifier is not None else None,
            sink=drift_uplink,
        )
        self.deployments = Deployments(self.registry, settings, self.metrics, self.monitor)
        url_for = WebhookUrls(settings, self.deployments, self.metrics.webhook_urls_refused)
        self.monitor.on_change = DriftAlerts(self.notifier, url_for)
        if drift_uplink is not None:
            drift_uplink.attach(self.monitor, url_for)
        self.mirror = ShadowMirror(self.metrics, settings.shadow_max_inflight)
        admission = Admission(
            settings.max_inflight, self.metrics.requests_refused.labels("inflight").inc
        )
        self.service = InferenceService(
            self.deployments,
            self.mirror,
            self.monitor,
            admission=admission,
            access=self.security.access,
        )
        self._background: list[asyncio.Task[None]] = []
        self.guard = RolloutGuard(
            ServedTraffic(self.deployments, self.mirror),
            self.registry,
            settings,
            self.metrics.guard_rollbacks,
        )
        self._http: DrainingServer | None = None
        self._http_drain = HttpDrain()
        self._http_task: asyncio.Task[None] | None = None
        self._grpc = GrpcFrontend(
            self.service, settings, self.security.grpc_credentials(), reuse_port=shared_ports
        )
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._load_task: asyncio.Task[None] | None = None
        self.addresses: Addresses | None = None

    def _was_drifting(self, model: str, version: str) -> bool:
        assert self.notifier is not None
        return self.notifier.outbox.episode(model, version).drifting

    async def start(self) -> Addresses:
        """Bind and start every endpoint, then load models in the background.

        Raises BindError when a port cannot be had; then nothing is left bound or serving.
        """
        s = self.settings
        metrics_host, metrics_security = s.host, self.security
        if self._shared_ports:
            # A worker's metrics are the supervisor's to merge: on loopback, in plain text,
            # while the supervisor's own metrics port serves TLS and asks for tokens.
            metrics_host = "::1" if ":" in s.host else "127.0.0.1"
            metrics_security = dataclasses.replace(
                self.security, metrics=None, protect_metrics=False
            )
        # Every port is bound before anything serves: a port that is taken must not leave
        # the others bound, or a server that looks healthy.
        async with contextlib.AsyncExitStack() as undo:
            sock = listen(
                s.host,
                s.http_port,
                setting="http_port",
                flag="--http-port",
                backlog=2048,
                shared=self._shared_ports,
            )
            undo.callback(sock.close)
            grpc_port = await self._start_grpc()
            undo.push_async_callback(self._grpc.stop, 0)
            metrics_sock = listen(
                metrics_host, s.metrics_port, setting="metrics_port", flag="--metrics-port",
                backlog=128,
            )  # fmt: skip
            undo.pop_all()
        self._metrics_endpoint = MetricsEndpoint(
            self.metrics.registry, metrics_sock, s, metrics_security
        )
        await self._metrics_endpoint.start()
        metrics_port = self._metrics_endpoint.port
        config = uvicorn.Config(
            HttpFrontend(self.service, s),
            http=protocol_for(
                self._http_drain,
                read_limits(s),
                self.service.admission,
                self.metrics.requests_refused.labels("slow_body").inc,
            ),
            loop="none",
            lifespan="off",
            access_log=False,
            # uvicorn's X-Forwarded-* middleware would rewrite the client and scheme of
            # every request; nothing here reads them (the per-client limits take the
            # connection's peer), so it would be a layer of work per request for nothing.
            proxy_headers=False,
            log_level="warning",
            timeout_keep_alive=s.keep_alive_timeout,  # type: ignore[arg-type]  # float works
            timeout_graceful_shutdown=max(1, round(s.drain_seconds)),
        )
        config.load()
        config.ssl = self.security.http_context()  # uvicorn serves the context found here
        shedding = SheddingMetrics(self.metrics.http_shedding, self.metrics.http_shedding_seconds)
        self._http = DrainingServer(
            config,
            sock,
            shed_for=self.service.admission if s.shed_connections else None,
            metrics=shedding,
        )
        http_port = sock.getsockname()[1]
        self._http_task = await start_serving(self._http, sock)
        self.addresses = Addresses(
            address(s.host, http_port), address(s.host, grpc_port), address(s.host, metrics_port)
        )
        log.info(
            "modelgate %s http=%s grpc=%s metrics=%s",
            "worker listening" if self._shared_ports else "listening",
            self.addresses.http,
            self.addresses.grpc,
            self.addresses.metrics,
        )
        if self._drift_uplink is not None:
            self._drift_uplink.serving(self.service)
        following = (
            self.deployments.follow()
            if self._pushed_routes is None
            else self._pushed_routes.run(self.deployments)
        )
        self._load_task = asyncio.create_task(following)
        self._background.append(asyncio.create_task(self.monitor.run()))
        if not self._shared_ports:  # under a supervisor, its guard sees every worker's traffic
            self._background.append(asyncio.create_task(self.guard.run()))
        if self.notifier is not None:
            self._background.append(asyncio.create_task(self.notifier.run()))
        return self.addresses

    async def _start_grpc(self) -> int:
        s = self.settings
        if s.grpc_port != 0 and not self._shared_ports:
            # A plain bind first: gRPC's own failure is a line of C logging on stderr and a
            # RuntimeError that does not say why.
            listen(s.host, s.grpc_port, setting="grpc_port", flag="--grpc-port", backlog=1).close()
        try:
            return await self._grpc.start(s.host, s.grpc_port)
        except RuntimeError:
            raise bind_error(s.host, s.grpc_port, setting="grpc_port", flag="--grpc-port") from None

    async def wait_loaded(self) -> None:
        """Until the registry was read and every version it named has loaded (or failed)."""
        waiting = asyncio.ensure_future(self.deployments.wait_read())
        assert self._load_task is not None
        await asyncio.wait([waiting, self._load_task], return_when=asyncio.FIRST_COMPLETED)
        if self._load_task.done():
            waiting.cancel()
            self._load_task.result()
        await self.deployments.wait_idle()

    async def stop(self) -> None:
        """Drain: report not-ready, let in-flight requests finish, then unload models."""
        log.info("modelgate draining")
        self.service.begin_drain()
        # Connections the kernel accepted but uvicorn has not read from yet would be reset
        # if the listener closed now: keep serving while load balancers see "not ready",
        # telling keep-alive clients to reconnect (Connection: close; see http_connections).
        self._http_drain.begin()
        if self.settings.drain_delay > 0:
            await asyncio.sleep(self.settings.drain_delay)
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._load_task
        if self._http is not None:
            self._http.should_exit = True
        await self._grpc.stop(self.settings.drain_seconds)
        if self._http_task is not None:
            await self._http_task
        await self.deployments.stop(self.settings.drain_seconds)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.monitor.close()
        if self.notifier is not None:
            await self.notifier.close()
        if self._metrics_endpoint is not None:
            await self._metrics_endpoint.stop()
        close = getattr(self.registry, "close", None)
        if self._owns_registry and close is not None:
            close()
        log.info("modelgate stopped")


def _location(settings: ServerSettings) -> str:
    """Where models come from: `registry` if set, else the `store` directory."""
    return settings.registry or str(settings.store)


def _store_dir(settings: ServerSettings) -> Path | None:
    """The embedded store's directory, when the models come from one."""
    return local_store(_location(settings))


def _open_registry(settings: ServerSettings) -> RegistryClient:
    token = None
    if settings.registry_token_file is not None:
        try:
            token = settings.registry_token_file.read_text().strip()
        except OSError as exc:
            raise ValueError(f"registry token file: {exc}") from None
    location = _location(settings)
    store = local_store(location)
    try:
        return open_registry(location, token=token, create=settings.create_store)
    except LocationError as exc:
        if store is None:
            raise
        name = "registry" if settings.registry else "store"
        raise LocationError(
            f"{exc}: register a model there with `modelgate registry --store {location} "
            "register NAME FILE`, pass --create-store on to start with an empty one, or fix "
            f"--{name} (MODELGATE_{name.upper()})"
        ) from None


def _refuse(message: str) -> NoReturn:
    """A setting that cannot work: one line, status 2."""
    print(f"modelgate: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


async def _check_registry(gateway: Gateway) -> None:
    """Refuse to start on a registry that is not there (an unknown host, a server of another
    kind, a rejected token): waiting cannot fix those. One that does not answer yet (down,
    restarting, overloaded) is waited for: the gateway starts not ready and follows it once
    it answers, so a registry that starts after the gateway costs no restart loop."""
    try:
        await asyncio.to_thread(gateway.registry.generation)
    except (LocationError, AuthError) as exc:
        close = getattr(gateway.registry, "close", None)
        if close is not None:
            close()
        _refuse(str(exc))
    except Exception:  # not there yet, or not well: the follower retries and logs it
        pass


async def serve(
    settings: ServerSettings,
    *,
    shared_ports: bool = False,
    started: Callable[[Addresses], None] | None = None,
    drift_uplink: DriftUplink | None = None,
    pushed_routes: RouteReceiver | None = None,
) -> None:
    """Run a gateway until SIGINT or SIGTERM, then drain and stop; `started` hears its
    addresses once it listens (`shared_ports`, `drift_uplink`, `pushed_routes`: see
    `Gateway`)."""
    try:
        gateway = Gateway(
            settings,
            shared_ports=shared_ports,
            drift_uplink=drift_uplink,
            pushed_routes=pushed_routes,
        )
    except (RegistryError, ValueError, OSError) as exc:
        _refuse(str(exc))
    await _check_registry(gateway)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    addresses = await gateway.start()
    if started is not None:
        started(addresses)
    # What exists now (modules, the registry, the first models) lives as long as the process:
    # frozen, the garbage collector's full passes under load no longer rescan it.
    gc.collect()
    gc.freeze()
    try:
        await stop.wait()
    finally:
        await gateway.stop()


def run(
    settings: ServerSettings,
    *,
    shared_ports: bool = False,
    started: Callable[[Addresses], None] | None = None,
    drift_uplink: DriftUplink | None = None,
    pushed_routes: RouteReceiver | None = None,
) -> None:
    """Entry point of one serving process: the uvloop event loop, then `serve`."""
    import uvloop

    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("modelgate serve must run in the main thread (signal handling)")
    uvloop.run(
        serve(
            settings,
            shared_ports=shared_ports,
            started=started,
            drift_uplink=drift_uplink,
            pushed_routes=pushed_routes,
        )
    )
