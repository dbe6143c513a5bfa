"""Registry versions -> loaded, servable model versions, and the routing table over them.

A `Deployment` is one model version in ONNX Runtime behind its own micro-batcher. Its state
moves LOADING -> READY -> DRAINING -> UNLOADED, or LOADING -> FAILED; only READY
deployments take traffic.

`Deployments` follows the registry: every version in a served stage (production, canary,
shadow, staging) is loaded and warmed up in the background; when it is READY the model's
`Routes` are rebuilt and swapped in whole, so a request sees the old routing or the new one,
never half of each. A version that left its stage is drained (in-flight requests finish)
and unloaded. While a new production version loads, or if it fails to load, the previous
one keeps serving.

A change of stages comes in two steps: `prepare(records)` loads and warms up what entered
while routing stays as it is, `commit()` reroutes to the new stages and drains what left.
A version loaded by a `prepare` takes traffic from the next `commit` on, never before;
a version still loading at the `commit` joins its stage when it is READY.
A lone gateway follows the registry itself (`follow`, `core.registry_watch`) and commits
each read at once (`apply`). Under a supervisor (`--workers N`) the supervisor follows the
registry once and pushes the records to every worker; each worker prepares, says so, and
commits when the supervisor tells every worker to, at the same moment
(gateway/route_link.py), so that a routing key lands on one version whichever worker
takes the request.

A canary or shadow takes production's traffic only if its loaded model's inputs and
outputs fit the primary's (`registry.signature.signature_differences`) or the version's
tag `modelgate.signature_change` allows the difference: registries such as MLflow change
stages without asking modelgate, and clients send what production advertises. A version
held back is logged once, flagged by the `modelgate_signature_mismatch` gauge, and still
answers requests that name it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from modelgate.gateway.core.batcher import BatchObserver, MicroBatcher
from modelgate.gateway.core.errors import ErrorCode, InferenceError
from modelgate.gateway.core.readiness import ModelHealth, ModelReport, Readiness, ServerReadiness
from modelgate.gateway.core.registry_watch import RegistryWatch
from modelgate.gateway.core.router import TrafficSplit
from modelgate.gateway.core.runtime import ModelLoadError, OnnxModel
from modelgate.gateway.core.types import VersionStatus
from modelgate.gateway.metrics import Metrics, VersionMetrics
from modelgate.gateway.settings import BatchSettings, ServerSettings
from modelgate.monitor.monitor import DriftMonitor
from modelgate.monitor.profile import ReferenceProfile
from modelgate.registry.client import SERVED_STAGES, RegistryClient
from modelgate.registry.signature import listing, signature_differences
from modelgate.registry.types import (
    MODEL_NAME_SYNTAX,
    SIGNATURE_CHANGE_TAG,
    ModelVersion,
    Stage,
    is_model_name,
    shown,
)

log = logging.getLogger(__name__)

# Seconds a leaving version keeps taking requests that chose it just before the switch
# (a gRPC server on its own loop may be between routing and queueing).
DRAIN_GRACE = 0.25
RETRY_MAX = 300.0  # longest wait before retrying a version that failed to load


class ModelState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    DRAINING = "DRAINING"
    UNLOADED = "UNLOADED"
    FAILED = "FAILED"


@dataclass(eq=False)
class Deployment:
    """One model version as the gateway serves it."""

    name: str
    version: str
    record: ModelVersion
    metrics: VersionMetrics
    state: ModelState = ModelState.LOADING
    model: OnnxModel | None = None
    batcher: MicroBatcher | None = None
    error: str | None = None
    failures: int = 0
    retry_at: float = 0.0

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY


# Shadow versions with the percent of requests mirrored to each.
Shadows = tuple[tuple[Deployment, float], ...]


@dataclass(frozen=True, slots=True)
class Routes:
    """How one model's requests flow right now; replaced whole, never edited."""

    versions: dict[str, Deployment]
    primary: Deployment | None
    split: TrafficSplit[Deployment]
    shadows: Shadows = ()


class Deployments:
    """The models this gateway serves, following the registry."""

    def __init__(
        self,
        registry: RegistryClient,
        settings: ServerSettings,
        metrics: Metrics,
        monitor: DriftMonitor | None = None,
    ) -> None:
        self._registry = registry
        self._settings = settings
        self._metrics = metrics
        self._monitor = monitor
        self._routes: dict[str, Routes] = {}
        self._split: frozenset[str] = frozenset()  # models whose traffic is split, of `_routes`
        self._all: dict[str, dict[str, Deployment]] = {}  # every deployment, any state
        # The registry's served versions at the last read: name -> version -> record.
        self._desired: dict[str, dict[str, ModelVersion]] = {}
        # Prepared but not committed yet (see `prepare`): the same shape as `_desired`.
        self._staged: dict[str, dict[str, ModelVersion]] = {}
        # Loads started by a `prepare` not committed yet: routed from the `commit` on.
        self._pending: set[Deployment] = set()
        self._pushed_error = ""  # the registry's error as a supervisor saw it, if it follows
        self._synced = False  # until stages were committed once, no name is unknown
        self._read = asyncio.Event()  # set with `_synced`, for those who wait for it
        polls = metrics.registry_polls
        self._registry_watch = RegistryWatch(registry, settings.poll_interval, polls)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loading: dict[Deployment, asyncio.Task[None]] = {}
        self._stopping = False
        self._retiring: set[Deployment] = set()  # retirements under way, never two per copy
        self._readiness = ServerReadiness(metrics.model_state, strict=settings.strict_readiness)
        # Canaries/shadows held back for their signature: production's version, differences.
        self._misfits: dict[Deployment, tuple[str, ...]] = {}
        self._refused_names: set[str] = set()  # served names outside the syntax, logged once

    # --- reads on the request path --------------------------------------------------------

    def split(self, name: str) -> bool:
        """Whether `name`'s traffic is split between versions (so a routing key matters)."""
        return name in self._split

    def resolve(
        self, name: str, version: str | None, routing_key: str | None = None
    ) -> tuple[Deployment, Shadows]:
        """The deployment a request for (`name`, `version`) goes to, or the error to answer;
        with the shadows its answer is mirrored to (a request that named no version and
        went to the primary is)."""
        routes = self._routes.get(name)
        if routes is None:
            raise self._unknown(name)
        shadows: Shadows = ()
        if version is None:
            deployment = routes.split.choose(routing_key)
            if deployment is None:
                raise InferenceError(
                    ErrorCode.UNAVAILABLE, f"model {name!r} is not ready ({self._why(name)})"
                )
            if deployment is routes.primary:
                shadows = routes.shadows
        else:
            deployment = routes.versions.get(version)
            if deployment is None:
                raise InferenceError(
                    ErrorCode.NOT_FOUND, f"unknown version {version!r} of model {name!r}"
                )
        if not deployment.ready:
            raise InferenceError(
                ErrorCode.UNAVAILABLE,
                f"model {name!r} version {deployment.version} is not ready "
                f"({deployment.state.value.lower()})",
            )
        return deployment, shadows

    def shadows(self, name: str) -> Shadows:
        """The shadow versions of `name` with the percent of requests mirrored to each."""
        routes = self._routes.get(name)
        return routes.shadows if routes is not None else ()

    def get(self, name: str, version: str | None) -> Deployment:
        """Like `resolve` but returns deployments in any state (for metadata and readiness);
        without a version, the primary (or the production version still loading)."""
        routes = self._routes.get(name)
        if routes is None:
            raise self._unknown(name)
        if version is None:
            deployment = routes.primary or self._desired_production(name)
            if deployment is None:
                raise InferenceError(
                    ErrorCode.UNAVAILABLE, f"model {name!r} has no production version"
                )
            return deployment
        found = routes.versions.get(version)
        if found is None:
            raise InferenceError(
                ErrorCode.NOT_FOUND, f"unknown version {version!r} of model {name!r}"
            )
        return found

    def _desired_production(self, name: str) -> Deployment | None:
        for version, record in self._desired.get(name, {}).items():
            if record.stage is Stage.PRODUCTION:
                return self._all.get(name, {}).get(version)
        return None

    def _why(self, name: str) -> str:
        production = self._desired_production(name)
        if production is None:
            return "no version in production"
        return f"production version {production.version} is {production.state.value.lower()}"

    def _unknown(self, name: str) -> InferenceError:
        if not self._synced:
            error = self._pushed_error or self._registry_watch.error
            why = f": {error}" if error else ""
            return InferenceError(
                ErrorCode.UNAVAILABLE,
                f"server is starting: the model registry is not read yet{why}",
            )
        return InferenceError(ErrorCode.NOT_FOUND, f"unknown model {name!r}")

    def batch_settings(self, name: str) -> BatchSettings:
        return self._settings.for_model(name).batch

    def versions_of(self, name: str) -> list[Deployment]:
        routes = self._routes.get(name)
        return list(routes.versions.values()) if routes is not None else []

    def routes(self, name: str) -> Routes | None:
        return self._routes.get(name)

    def names(self) -> list[str]:
        return sorted(self._routes)

    def all(self) -> Iterable[Deployment]:
        for versions in list(self._all.values()):
            yield from list(versions.values())

    def status(self, name: str) -> list[VersionStatus]:
        """Every version of `name` the gateway knows: stage, state, traffic, last error."""
        routes = self._routes.get(name)
        if routes is None:
            raise self._unknown(name)
        return [
            VersionStatus(
                d.version,
                _served_role(d, routes),
                d.state.value,
                _share(d, routes),
                d.error,
            )
            for d in sorted(routes.versions.values(), key=lambda d: int(d.version))
        ]

    def readiness(self) -> Readiness:
        """The server's readiness as the models stand (see `core.readiness`)."""
        return self._readiness.current

    # --- following the registry -------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the registry once and reconcile: load what entered, route, drain what left."""
        await self._registry_watch.refresh(self._applied)

    def _applied(self, generation: str, records: list[ModelVersion]) -> None:
        self.apply(records)

    def apply(self, records: Iterable[ModelVersion]) -> None:
        """Reconcile with the registry's current records (the served stages among them):
        `prepare` them and `commit` at once, each version routed as soon as it is READY."""
        self.prepare(records)
        self.commit()

    def prepare(self, records: Iterable[ModelVersion], *, retry: bool = False) -> None:
        """Load and warm up what the records serve and is not loaded yet, in the background;
        routing stays as it is until `commit`. Replaces an earlier prepare not committed.
        A version that failed to load is tried again once its backoff passed, or at once
        with `retry` (a supervisor paces the retries of all its workers together)."""
        staged: dict[str, dict[str, ModelVersion]] = {}
        refused: set[str] = set()
        for record in records:
            if record.stage not in SERVED_STAGES:
                continue
            if not is_model_name(record.name):
                refused.add(record.name)
                continue
            staged.setdefault(record.name, {})[str(record.version)] = record
        self._refuse_names(refused)
        self._staged = staged
        self._pending = {d for d in self._pending if self._current(d)}
        now = time.monotonic()
        for name, versions in staged.items():
            for version, record in versions.items():
                current = self._all.get(name, {}).get(version)
                if (
                    current is None
                    or current.state in (ModelState.DRAINING, ModelState.UNLOADED)
                    or current.record.sha256 != record.sha256
                    or (current.state is ModelState.FAILED and (retry or now >= current.retry_at))
                ):
                    self._pending.add(self._start_load(record, current))
                # Otherwise the record's stage and traffic take effect at `commit`.

    async def prepared(self) -> None:
        """Until every version of the last `prepare` has loaded or failed."""
        while True:
            loading = [
                task
                for d, task in self._loading.items()
                if self._staged.get(d.name, {}).get(d.version) is not None and self._current(d)
            ]
            if not loading:
                return
            await asyncio.wait(loading)

    def failed(self) -> bool:
        """Whether a version of the last `prepare` failed to load."""
        return any(
            d is not None and d.state is ModelState.FAILED
            for name, versions in self._staged.items()
            for d in (self._all.get(name, {}).get(v) for v in versions)
        )

    def registry_failed(self, error: str) -> None:
        """The registry's last read error as the supervisor that follows it for this
        gateway saw it ("" once it read again): said to requests while nothing is routed."""
        self._pushed_error = error

    def commit(self) -> None:
        """Serve the stages of the last `prepare`: reroute every model now (a version
        still loading joins its stage when it is READY), drain what left."""
        for name, versions in self._staged.items():
            for version, record in versions.items():
                current = self._all.get(name, {}).get(version)
                if current is not None and current.record.sha256 == record.sha256:
                    current.record = record
        self._desired = self._staged
        self._pending.clear()
        self._synced = True
        self._read.set()
        self._reroute()

    @property
    def synced(self) -> bool:
        """Whether stages were committed once (before that, no name is unknown)."""
        return self._synced

    def _refuse_names(self, refused: set[str]) -> None:
        """Log each served name outside the name syntax once, escaped: such names come from
        registries that do not check them (MLflow, a store written by older code)."""
        for name in sorted(refused - self._refused_names):
            log.warning(
                "not serving model %s: the name is outside the model name syntax (%s); "
                "register it under a name that follows it",
                shown(name),
                MODEL_NAME_SYNTAX,
            )
        self._refused_names = refused  # the current ones only: bounded by the registry

    async def wait_read(self) -> None:
        """Until the registry has been read once (`follow` does that first)."""
        await self._read.wait()

    async def follow(self) -> None:
        """Follow the registry on its own (a lone gateway; under a supervisor the supervisor
        follows and pushes, see gateway/route_link.py): read it, then poll its generation
        and reconcile on change, until cancelled (`core.registry_watch`). A failing registry
        is retried with backoff while the gateway serves what it has (before the first
        read: nothing, and not ready)."""
        await self._registry_watch.run(self._applied, self.retry_due)

    def retry_due(self) -> bool:
        """Whether a version that failed to load is due for another try."""
        now = time.monotonic()
        return any(
            d.state is ModelState.FAILED and now >= d.retry_at
            for name, versions in self._desired.items()
            for d in (self._all.get(name, {}).get(v) for v in versions)
            if d is not None
        )

    async def wait_idle(self) -> None:
        """Until no load or drain is in progress (tests, and startup readiness)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- routing ----------------------------------------------------------------------------

    def _reroute(self) -> None:
        """Rebuild every model's routes from the desired stages and what is READY."""
        routes: dict[str, Routes] = {}
        reports: list[ModelReport] = []
        retained: set[Deployment] = set()
        misfits: dict[Deployment, tuple[str, ...]] = {}
        for name in sorted(set(self._all) | set(self._desired)):
            versions = self._all.get(name, {})
            wanted = self._desired.get(name, {})
            by_stage: dict[Stage, list[Deployment]] = {}
            for version, record in wanted.items():
                deployment = versions.get(version)
                if deployment is not None:
                    retained.add(deployment)
                    by_stage.setdefault(record.stage, []).append(deployment)
            for version in self._staged.get(name, {}):  # prepared for the next commit
                if version in versions:
                    retained.add(versions[version])
            production = by_stage.get(Stage.PRODUCTION, [])
            primary = next((d for d in production if self._routable(d)), None)
            previous = self._routes.get(name)
            if primary is None and production and previous is not None:
                # The new production version is loading or failed: keep the old one serving.
                kept = previous.primary
                if kept is not None and self._routable(kept):
                    primary = kept
                    retained.add(kept)
            canaries = [
                (d, d.version, float(d.record.traffic or 0.0))
                for d in by_stage.get(Stage.CANARY, [])
                if self._routable(d) and self._fits(d, primary, misfits)
            ]
            # Canaries take their shares of production's traffic: with no production
            # version, unaddressed requests have nowhere to go (503), canaries included.
            split: TrafficSplit[Deployment] = (
                TrafficSplit.primary_with_canaries((primary, primary.version), canaries)
                if primary is not None
                else TrafficSplit([])
            )
            shadows = tuple(
                (d, float(d.record.traffic if d.record.traffic is not None else 100.0))
                for d in by_stage.get(Stage.SHADOW, [])
                if self._routable(d) and self._fits(d, primary, misfits)
            )
            live = {v: d for v, d in versions.items() if d.state is not ModelState.UNLOADED}
            if live or wanted:
                routes[name] = Routes(live, primary, split, shadows)
                reports.append(_report(name, production, primary))
            self._export_shares(name, previous, routes.get(name))
        self._routes = routes
        self._split = frozenset(name for name, r in routes.items() if len(r.split.arms) > 1)
        self._readiness.update(reports, synced=self._synced)
        self._hold_back(misfits)
        for deployment in list(self.all()):
            if (
                deployment not in retained
                and deployment not in self._retiring
                and deployment.state in (ModelState.READY, ModelState.FAILED)
            ):
                self._retiring.add(deployment)
                self._spawn(self._retire(deployment))

    def _routable(self, deployment: Deployment) -> bool:
        """READY, and not loaded by a `prepare` still waiting for its `commit`."""
        return deployment.ready and deployment not in self._pending

    def _fits(
        self,
        deployment: Deployment,
        primary: Deployment | None,
        misfits: dict[Deployment, tuple[str, ...]],
    ) -> bool:
        """Whether a READY canary or shadow may take a share of `primary`'s traffic; if not,
        its differences go into `misfits`."""
        if primary is None or primary.model is None or deployment.model is None:
            return True  # nothing to compare with: with no primary, nothing is routed
        if deployment.record.tags.get(SIGNATURE_CHANGE_TAG):
            return True
        label = f"version {deployment.version}"
        differences = signature_differences(primary.model, deployment.model, label)
        if differences:
            misfits[deployment] = (primary.version, *differences)
        return not differences

    def _hold_back(self, misfits: dict[Deployment, tuple[str, ...]]) -> None:
        """Log each newly held-back version once; the gauge shows the ones held back now."""
        for deployment, (production, *differences) in misfits.items():
            if self._misfits.get(deployment) != misfits[deployment]:
                log.warning(
                    "model %s v%s (%s) takes no traffic: its signature differs from production "
                    "v%s (production != version %s): %s; to route it anyway, allow the change "
                    "(modelgate registry transition --allow-signature-change --reason ..., or "
                    "the version tag %s=<why>)",
                    deployment.name, deployment.version, deployment.record.stage.value,
                    production, deployment.version, listing(differences), SIGNATURE_CHANGE_TAG,
                )  # fmt: skip
        gauge = self._metrics.signature_mismatch
        before = {(d.name, d.version) for d in self._misfits}
        after = {(d.name, d.version) for d in misfits}
        for labels in before - after:
            gauge.remove(*labels)
        for labels in after:
            gauge.labels(*labels).set(1)
        self._misfits = misfits

    def _export_shares(self, name: str, before: Routes | None, after: Routes | None) -> None:
        gauge = self._metrics.traffic_share
        old = _shares(before)
        new = _shares(after)
        for key in old.keys() - new.keys():
            gauge.remove(name, *key)
        for key, share in new.items():
            gauge.labels(name, *key).set(share)
        if before is not None and after is not None and old != new:
            self._metrics.routing_changes.labels(name).inc()
            log.info(
                "model %s routing: %s",
                name,
                ", ".join(f"v{v} {role} {s:g}%" for (v, role), s in sorted(new.items())) or "none",
            )

    # --- lifecycle --------------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _start_load(self, record: ModelVersion, previous: Deployment | None) -> Deployment:
        version = str(record.version)
        deployment = Deployment(
            record.name, version, record, self._metrics.for_version(record.name, version)
        )
        if previous is not None and previous.state is ModelState.FAILED:
            deployment.failures = previous.failures
            deployment.error = previous.error  # still the last error while it retries
        versions = {**self._all.get(record.name, {}), version: deployment}
        self._all = {**self._all, record.name: versions}
        replaced = previous if previous is not None and previous.ready else None
        task = self._spawn(self._load(deployment, replaced))
        self._loading[deployment] = task
        task.add_done_callback(lambda _: self._loading.pop(deployment, None))
        return deployment

    def _current(self, deployment: Deployment) -> bool:
        """Whether `deployment` is still the copy of its version the gateway keeps."""
        return self._all.get(deployment.name, {}).get(deployment.version) is deployment

    async def _load(self, deployment: Deployment, replaced: Deployment | None = None) -> None:
        """Load and warm up a version; `replaced` is a ready copy of the same version (a
        changed artifact) to retire once this one is ready."""
        try:
            model, warmup_seconds = await asyncio.to_thread(self._build_model, deployment.record)
            if self._stopping or not self._current(deployment):
                return  # superseded while loading (or shutting down): never served
            reference = await asyncio.to_thread(self._reference, deployment)
            observe = self._watch(deployment, model, reference)
        except Exception as exc:
            deployment.state = ModelState.FAILED
            deployment.error = str(exc)
            deployment.failures += 1
            deployment.retry_at = time.monotonic() + min(RETRY_MAX, 2.0**deployment.failures)
            self._metrics.model_load_failures.labels(deployment.name, deployment.version).inc()
            log.error("model %s v%s failed to load: %s", deployment.name, deployment.version, exc)
            self._reroute()
            return
        serving = self._settings.for_model(deployment.name)
        deployment.model = model
        deployment.batcher = MicroBatcher(
            model.run,
            [spec.name for spec in model.inputs],
            serving.batch,
            model.batchable,
            deployment.metrics,
            name=f"batch-{deployment.name}-v{deployment.version}",
            batch_seconds=warmup_seconds,
            observe=observe,
        )
        deployment.state = ModelState.READY
        deployment.error = None
        deployment.metrics.loaded.set(1)
        log.info(
            "model %s v%s ready (%s)",
            deployment.name,
            deployment.version,
            "batched" if model.batchable else "fixed batch dimension: unbatched",
        )
        if replaced is not None and replaced not in self._retiring:
            self._retiring.add(replaced)
            self._spawn(self._retire(replaced))
        self._reroute()

    def _monitored(self, deployment: Deployment) -> bool:
        settings = self._settings.for_model(deployment.name).monitor
        return self._monitor is not None and settings.monitoring

    def _reference(self, deployment: Deployment) -> ReferenceProfile | None:
        """The version's reference profile, calibrated for the monitor's settings (in a
        worker thread: calibrating takes a few ms a feature); None to learn one."""
        if not self._monitored(deployment) or deployment.record.reference is None:
            return None
        try:
            profile = ReferenceProfile.from_json(deployment.record.reference)
        except ValueError as exc:
            log.warning("%s v%s: unreadable reference profile, learning one: %s",
                        deployment.name, deployment.version, exc)  # fmt: skip
            return None
        assert self._monitor is not None
        return self._monitor.prepare(deployment.name, profile)

    def _watch(
        self, deployment: Deployment, model: OnnxModel, profile: ReferenceProfile | None
    ) -> BatchObserver | None:
        """Register the version with the drift monitor; the batch hook that feeds it."""
        monitor = self._monitor
        if monitor is None or not self._monitored(deployment):
            return None
        name, version = deployment.name, deployment.version
        if profile is None:
            log.info("%s v%s has no reference profile: the drift monitor learns one from "
                     "the first live rows", name, version)  # fmt: skip
        monitor.register(name, version, profile)
        return monitor.tap(name, version, model.output_names)

    def _build_model(self, record: ModelVersion) -> tuple[OnnxModel, float]:
        """The loaded model and the seconds its fastest warm-up run took."""
        data = self._registry.read_artifact(record)
        model = OnnxModel(data, self._settings.for_model(record.name).runtime)
        try:
            seconds = model.warm_up()
        except Exception as exc:
            raise ModelLoadError(f"warm-up run failed: {exc}") from exc
        return model, seconds

    async def _retire(self, deployment: Deployment) -> None:
        """Take a version out of service: let requests already routed to it finish, unload."""
        if deployment.state is ModelState.READY:
            deployment.state = ModelState.DRAINING
            log.info("model %s v%s draining", deployment.name, deployment.version)
            await asyncio.sleep(DRAIN_GRACE)
            await self._drain(deployment, self._settings.drain_seconds)
        versions = dict(self._all.get(deployment.name, {}))
        if versions.get(deployment.version) is deployment:
            del versions[deployment.version]
            self._all = {**self._all, deployment.name: versions}
            if not versions:
                del self._all[deployment.name]
        deployment.state = ModelState.UNLOADED
        self._reroute()

    async def _drain(self, deployment: Deployment, timeout: float) -> None:
        batcher = deployment.batcher
        if batcher is None:
            return
        deployment.state = ModelState.DRAINING
        batcher.stop()
        if not await asyncio.to_thread(batcher.join, timeout):
            log.warning("%s v%s did not drain in time", deployment.name, deployment.version)
        deployment.state = ModelState.UNLOADED
        current = self._all.get(deployment.name, {}).get(deployment.version)
        if current in (None, deployment):  # not reloaded since: the version is gone
            deployment.metrics.loaded.set(0)
            if self._monitor is not None:
                self._monitor.unregister(deployment.name, deployment.version)
        deployment.model = deployment.batcher = None  # free the session now, not at exit
        log.info("model %s v%s unloaded", deployment.name, deployment.version)

    async def stop(self, timeout: float) -> None:
        """Drain every deployment: new requests are refused, queued ones still finish."""
        self._stopping = True
        await self.wait_idle()
        await asyncio.gather(*(self._drain(d, timeout) for d in self.all()))


def _report(name: str, production: list[Deployment], primary: Deployment | None) -> ModelReport:
    """Whether `name` answers requests that name no version, and if not, why."""
    if primary is not None:
        return ModelReport(name, ModelHealth.SERVING, primary.version)
    if not production:
        return ModelReport(name, ModelHealth.NO_PRODUCTION)
    deployment = production[0]
    if deployment.state is ModelState.FAILED or deployment.error:  # failed, or retrying
        return ModelReport(name, ModelHealth.FAILED, deployment.version, deployment.error)
    return ModelReport(name, ModelHealth.LOADING, deployment.version)


def _served_role(deployment: Deployment, routes: Routes) -> str:
    """The stage a version serves in right now (a kept previous primary says so)."""
    if deployment is routes.primary and deployment.record.stage is not Stage.PRODUCTION:
        return "production (kept until the new production version is ready)"
    return deployment.record.stage.value


def _share(deployment: Deployment, routes: Routes) -> float | None:
    for arm in routes.split.arms:
        if arm.target is deployment:
            return arm.weight
    for shadow, share in routes.shadows:
        if shadow is deployment:
            return share
    return None


def _shares(routes: Routes | None) -> dict[tuple[str, str], float]:
    """(version, role) -> percent of traffic, for the traffic-share gauge."""
    if routes is None:
        return {}
    shares = {
        (arm.target.version, "primary" if arm.target is routes.primary else "canary"): arm.weight
        for arm in routes.split.arms
    }
    shares.update({(d.version, "shadow"): share for d, share in routes.shadows})
    return shares
