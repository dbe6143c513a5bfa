"""Registry versions -> loaded, servable model versions, with an explicit lifecycle.

A `Deployment` is one model version in ONNX Runtime behind its own micro-batcher. Its state
moves LOADING -> READY -> DRAINING -> UNLOADED, or LOADING -> FAILED; only READY
deployments take traffic. `Deployments` is the routing table the core reads on every
request: plain dict look-ups, swapped whole so readers never see a half-made change.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from gateway.core.batcher import MicroBatcher
from gateway.core.errors import ErrorCode, InferenceError
from gateway.core.runtime import ModelLoadError, OnnxModel
from gateway.metrics import Metrics, VersionMetrics
from gateway.settings import BatchSettings, ServerSettings
from registry.types import ModelVersion, Stage

log = logging.getLogger(__name__)


class ModelState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    DRAINING = "DRAINING"
    UNLOADED = "UNLOADED"
    FAILED = "FAILED"


class RegistryClient(Protocol):
    """What the gateway needs of a registry, whichever backend serves it."""

    def list_versions(self, name: str | None = None) -> list[ModelVersion]: ...

    def read_artifact(self, version: ModelVersion) -> bytes: ...


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

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY


class Deployments:
    """The models this gateway serves, loaded from the registry."""

    def __init__(
        self, registry: RegistryClient, settings: ServerSettings, metrics: Metrics
    ) -> None:
        self._registry = registry
        self._settings = settings
        self._metrics = metrics
        # name -> version -> deployment; `_primary` name -> the version unaddressed requests use
        self._versions: dict[str, dict[str, Deployment]] = {}
        self._primary: dict[str, str] = {}
        self._synced = False  # until the registry has been read once, no name is unknown

    # --- reads on the request path --------------------------------------------------------

    def resolve(self, name: str, version: str | None) -> Deployment:
        """The deployment a request for (`name`, `version`) goes to, or the error to answer."""
        versions = self._versions.get(name)
        if versions is None:
            raise self._unknown(name)
        if version is None:
            primary = self._primary.get(name)
            deployment = versions.get(primary) if primary is not None else None
        else:
            deployment = versions.get(version)
            if deployment is None:
                raise InferenceError(
                    ErrorCode.NOT_FOUND, f"unknown version {version!r} of model {name!r}"
                )
        if deployment is None or not deployment.ready:
            state = deployment.state.value if deployment else "no serving version"
            raise InferenceError(
                ErrorCode.UNAVAILABLE, f"model {name!r} is not ready ({state.lower()})"
            )
        return deployment

    def get(self, name: str, version: str | None) -> Deployment:
        """Like `resolve` but returns deployments in any state (for metadata and readiness)."""
        versions = self._versions.get(name)
        if versions is None:
            raise self._unknown(name)
        key = self._primary.get(name) if version is None else version
        deployment = versions.get(key) if key is not None else None
        if deployment is None:
            raise InferenceError(
                ErrorCode.NOT_FOUND, f"unknown version {version!r} of model {name!r}"
            )
        return deployment

    def _unknown(self, name: str) -> InferenceError:
        if not self._synced:
            return InferenceError(
                ErrorCode.UNAVAILABLE, "server is starting: the model registry is not read yet"
            )
        return InferenceError(ErrorCode.NOT_FOUND, f"unknown model {name!r}")

    def batch_settings(self, name: str) -> BatchSettings:
        return self._settings.for_model(name).batch

    def versions_of(self, name: str) -> list[Deployment]:
        return list(self._versions.get(name, {}).values())

    def all(self) -> Iterable[Deployment]:
        for versions in self._versions.values():
            yield from versions.values()

    def ready(self) -> bool:
        """True once the registry was read and every model has a READY primary version."""
        return self._synced and all(
            name in self._primary and self._versions[name][self._primary[name]].ready
            for name in self._versions
        )

    # --- lifecycle --------------------------------------------------------------------------

    async def load_from_registry(self) -> None:
        """Load every production version the registry lists; failures are logged, not fatal."""
        records = await asyncio.to_thread(self._registry.list_versions)
        production = [r for r in records if r.stage is Stage.PRODUCTION]
        for record in production:
            self._add(record, primary=True)
        self._synced = True
        await asyncio.gather(*(self._load(self.get(r.name, str(r.version))) for r in production))

    def _add(self, record: ModelVersion, *, primary: bool) -> Deployment:
        version = str(record.version)
        deployment = Deployment(
            record.name, version, record, self._metrics.for_version(record.name, version)
        )
        versions = dict(self._versions.get(record.name, {}))
        versions[version] = deployment
        self._versions = {**self._versions, record.name: versions}
        if primary:
            self._primary = {**self._primary, record.name: version}
        return deployment

    async def _load(self, deployment: Deployment) -> None:
        try:
            model, warmup_seconds = await asyncio.to_thread(self._build_model, deployment.record)
        except Exception as exc:
            deployment.state = ModelState.FAILED
            deployment.error = str(exc)
            self._metrics.model_load_failures.labels(deployment.name, deployment.version).inc()
            log.error("model %s v%s failed to load: %s", deployment.name, deployment.version, exc)
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
        )
        deployment.state = ModelState.READY
        deployment.metrics.loaded.set(1)
        log.info(
            "model %s v%s ready (%s)",
            deployment.name,
            deployment.version,
            "batched" if model.batchable else "fixed batch dimension: unbatched",
        )

    def _build_model(self, record: ModelVersion) -> tuple[OnnxModel, float]:
        """The loaded model and the seconds its fastest warm-up run took."""
        data = self._registry.read_artifact(record)
        model = OnnxModel(data, self._settings.for_model(record.name).runtime)
        try:
            seconds = model.warm_up()
        except Exception as exc:
            raise ModelLoadError(f"warm-up run failed: {exc}") from exc
        return model, seconds

    async def stop(self, timeout: float) -> None:
        """Drain every deployment: new requests are refused, queued ones still finish."""
        deployments = [d for d in self.all() if d.batcher is not None]
        for deployment in deployments:
            deployment.state = ModelState.DRAINING
            assert deployment.batcher is not None
            deployment.batcher.stop()
        for deployment in deployments:
            assert deployment.batcher is not None
            drained = await asyncio.to_thread(deployment.batcher.join, timeout)
            if not drained:
                log.warning("%s v%s did not drain in time", deployment.name, deployment.version)
            deployment.state = ModelState.UNLOADED
            deployment.metrics.loaded.set(0)
